"""A tiny checkpoint in the official 7B-241101 layout, written from scratch by the tests.

No official 241101 outputs are at hand, so its weights are random; what is official is the layout:
config.json with the 241101 fields (`vision_batch_size`), the fixture's tokenizer plus the four 241101
special tokens, and safetensors named as the 241101 checkpoints name them (docs/mplug-owl3.md §2), listed
here from that table rather than from owl3's own modules, so the loader is checked against the table.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import tokenizers
import torch
from PIL import Image
from safetensors.torch import save_file

FIXTURE = Path(__file__).parent / "fixtures" / "official-240728-tiny"
NEW_TOKENS = ("<|start_cut|>", "<|end_cut|>", "<|start_video_frame|>", "<|end_video_frame|>")
VISION_BATCH_SIZE = 3


def config_241101() -> dict:
    """The fixture's config.json turned into a 241101 one (fields of docs/mplug-owl3.md §1)."""
    d = json.loads((FIXTURE / "config.json").read_text())
    d["vision_batch_size"] = VISION_BATCH_SIZE
    return d


def official_names(d: dict) -> dict[str, tuple[int, ...]]:
    """Every tensor of a 241101 checkpoint with config `d`, and its shape (the §2 table)."""
    dim, hid, n_layers = d["hidden_size"], d["intermediate_size"], d["num_hidden_layers"]
    heads, kv = d["num_attention_heads"], d["num_key_value_heads"]
    hd = dim // heads
    v = d["vision_config"]
    c, vh = v["hidden_size"], v["intermediate_size"]
    grid = v["image_size"] // v["patch_size"]
    out: dict[str, tuple[int, ...]] = {
        "language_model.model.embed_tokens.weight": (d["vocab_size"], dim),
        "language_model.lm_head.weight": (d["vocab_size"], dim),
        "language_model.model.norm.weight": (dim,),
        "vision_model.embeddings.patch_embedding.weight": (c, 3, v["patch_size"], v["patch_size"]),
        "vision_model.embeddings.patch_embedding.bias": (c,),
        "vision_model.embeddings.position_embedding.weight": (grid * grid, c),
        "vision_model.post_layernorm.weight": (c,),  # present in releases, unused
        "vision_model.post_layernorm.bias": (c,),
        "vision2text_model.0.weight": (dim, c),
        "vision2text_model.0.bias": (dim,),
        "vision2text_model.2.weight": (dim, dim),
        "vision2text_model.2.bias": (dim,),
    }
    for i in range(n_layers):
        p = f"language_model.model.layers.{i}."
        for proj, width in (("q_proj", heads), ("k_proj", kv), ("v_proj", kv)):
            out[p + f"self_attn.{proj}.weight"] = (width * hd, dim)
            out[p + f"self_attn.{proj}.bias"] = (width * hd,)
        out[p + "self_attn.o_proj.weight"] = (dim, heads * hd)
        out[p + "mlp.gate_proj.weight"] = (hid, dim)
        out[p + "mlp.up_proj.weight"] = (hid, dim)
        out[p + "mlp.down_proj.weight"] = (dim, hid)
        out[p + "input_layernorm.weight"] = (dim,)
        out[p + "post_attention_layernorm.weight"] = (dim,)
        if i + 1 in d["hyper_layers"]:  # no gate weights in the 241101 family
            out[p + "self_attn.v_kv_proj.weight"] = (2 * kv * hd, dim)
            out[p + "self_attn.v_kv_proj.bias"] = (2 * kv * hd,)
    for j in range(v["num_hidden_layers"]):
        p = f"vision_model.encoder.layers.{j}."
        for norm in ("layer_norm1", "layer_norm2"):
            out[p + f"{norm}.weight"] = (c,)
            out[p + f"{norm}.bias"] = (c,)
        for proj in ("q_proj", "k_proj", "v_proj", "out_proj"):
            out[p + f"self_attn.{proj}.weight"] = (c, c)
            out[p + f"self_attn.{proj}.bias"] = (c,)
        out[p + "mlp.fc1.weight"] = (vh, c)
        out[p + "mlp.fc1.bias"] = (vh,)
        out[p + "mlp.fc2.weight"] = (c, vh)
        out[p + "mlp.fc2.bias"] = (c,)
    return out


def random_state(d: dict, seed: int = 0) -> dict[str, torch.Tensor]:
    """Random tensors for `official_names(d)`: norms near 1, biases and weights spread enough that the
    attention is far from uniform (so a wrong mask or position shows)."""
    g = torch.Generator().manual_seed(seed)
    out = {}
    for name, shape in official_names(d).items():
        t = torch.randn(shape, generator=g)
        if "norm" in name:
            t = 1 + 0.1 * t
        elif "embed_tokens" in name:
            t = 0.5 * t
        elif name.endswith("bias"):
            t = 0.05 * t
        else:
            t = 0.15 * t
        out[name] = t.contiguous()
    return out


def write_tokenizer(folder: Path) -> dict[str, int]:
    """The fixture's tokenizer files plus the four 241101 special tokens; returns their ids."""
    tok = tokenizers.Tokenizer.from_file(str(FIXTURE / "tokenizer.json"))
    tok.add_special_tokens([tokenizers.AddedToken(t, special=True, normalized=False) for t in NEW_TOKENS])
    tok.save(str(folder / "tokenizer.json"))
    ids = {t: tok.token_to_id(t) for t in NEW_TOKENS}
    tc = json.loads((FIXTURE / "tokenizer_config.json").read_text())
    for t, i in ids.items():
        tc["added_tokens_decoder"][str(i)] = {
            "content": t,
            "lstrip": False,
            "normalized": False,
            "rstrip": False,
            "single_word": False,
            "special": True,
        }
    (folder / "tokenizer_config.json").write_text(json.dumps(tc, indent=2))
    for name in ("special_tokens_map.json", "generation_config.json"):
        shutil.copy2(FIXTURE / name, folder / name)
    return ids


def write_checkpoint(folder: Path, seed: int = 0) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    d = config_241101()
    (folder / "config.json").write_text(json.dumps(d, indent=2))
    save_file(random_state(d, seed), folder / "model.safetensors", metadata={"format": "pt"})
    write_tokenizer(folder)
    shutil.copytree(FIXTURE / "images", folder / "images", dirs_exist_ok=True)
    return folder


# ------------------------------------------------------------------ shared by tests/test_241101_*.py
def img(folder, name):
    return Image.open(folder / "images" / name)


def frames(folder, n=5):
    return [img(folder, f"f{i}.png") for i in range(n)]


def run(engine, encs, params):
    out = [[] for _ in encs]
    for ev in engine.generate(encs, params):
        out[ev.request_id].append(ev.token_id)
    return out


def requests(pipe, folder):
    """Text only, two images, a cropped image, a video."""
    return [
        pipe.encode("Tell me a story."),
        pipe.encode(
            "Image 1: <|image|> Image 2: <|image|>. Compare.",
            [img(folder, "m1.png"), img(folder, "m2.png")],
        ),
        pipe.encode("What is this?", [img(folder, "wide.png")]),  # a lone image: cropped
        pipe.encode("<|video|>What happens?", videos=[frames(folder)]),
    ]
