"""`owl3 build`: a new mPLUG-Owl3 model from a Qwen2- or Llama-family LLM and a SigLIP vision tower.

Both inputs are checkpoint folders in the Hugging Face layout (config.json, safetensors, the LLM's
tokenizer.json). The result is a folder in the official mPLUG-Owl3 layout that `owl3.load` opens:
- vision_model.*: the SigLIP vision tower (text tower, post_layernorm and head dropped);
- vision2text_model: a new Linear(vision dim, LLM dim), PyTorch's default init (seeded); with
  `--variant 241101` a new Linear(vision dim, D), GELU, Linear(D, D) (`vision2text_model.0/2`);
- language_model.*: the LLM, its layers i with i + 1 in --hyper-layers (1-based, as config.json) becoming
  Hyper Attention layers with two new modules each:
  * v_kv_proj = [k_proj; v_proj] of the same layer, interleaved per kv head in the official channel
    layout (h * 2 + j) * head_dim + e (paper: "initialized from the LLM's k/v projection");
  * the gate g = sigmoid(gate_proj(A_self)) with weight 0 and bias GATE_BIAS, so g = sigmoid(-6) = 0.0025
    everywhere and A = A_self (1 - g) + A_cross g starts within 0.25 % of the text-only attention.
    The official code leaves the gate at its random init (g ~ 0.5), which halves the self-attention
    output of a pretrained LLM; a very negative bias (-10, g = 4.5e-5) keeps the LLM more exactly but
    makes the gate's and the cross branch's gradients so small that AdamW's epsilon eats them.
  With `--variant 241101` there is no gate: a hyper layer's queries do one softmax over [visual keys; text
  keys], so the images weigh in from the start (that is the fused design) while text-only input is
  untouched. The tokenizer also gets the 241101 template tokens (<|start_cut|>, <|end_cut|>,
  <|start_video_frame|>, <|end_video_frame|>) and config.json the field `vision_batch_size`.
- Text-only input never reaches the cross branch, so the new model's text logits equal the LLM's.

Llama-family LLMs have no q/k/v bias: zero biases are added (exactly the same function), the RoPE base
and RMSNorm epsilon are read from the LLM's config; RoPE scaling (Llama 3.1 "llama3", YaRN, ...) is
refused because owl3's decoder implements plain RoPE. The chat template needs `<|im_start|>`,
`<|im_end|>`, `<|endoftext|>` and `<|image|>`: missing ones are added to the tokenizer as special tokens;
if their ids pass the LLM's embedding rows, the embedding (and untied lm_head) grow, the new rows set to
the mean of the existing rows. Existing rows are never touched.
"""

from __future__ import annotations

import json
import shutil
from dataclasses import replace
from pathlib import Path
from typing import Any

import tokenizers
import torch
from safetensors import safe_open
from torch import Tensor, nn

from owl3.checkpoint.load import weight_files
from owl3.config import VARIANT_241101_TOKENS, VARIANTS, Owl3Config, TextConfig, VisionConfig
from owl3.errors import Owl3Error
from owl3.model import meta_model
from owl3.processing.chat import END_OF_TEXT, IM_END, IM_START
from owl3.training.config import GATE_BIAS
from owl3.training.state import StateView

IMAGE_TOKEN = "<|image|>"
SPECIAL_TOKENS = (END_OF_TEXT, IM_START, IM_END, IMAGE_TOKEN)
LLM_TYPES = ("qwen2", "llama", "mistral")
SIGLIP_DEFAULTS = {  # transformers' SiglipVisionConfig defaults (a config.json omits default values)
    "hidden_size": 768,
    "intermediate_size": 3072,
    "num_hidden_layers": 12,
    "num_attention_heads": 12,
    "image_size": 224,
    "patch_size": 16,
    "layer_norm_eps": 1e-6,
    "hidden_act": "gelu_pytorch_tanh",
    "num_channels": 3,
}
IGNORED_LLM = ("rotary_emb.inv_freq",)
IGNORED_VISION = ("vision_model.post_layernorm.", "vision_model.head.")


def _json(path: Path) -> dict[str, Any]:
    if not path.is_file():
        raise Owl3Error(f"{path} not found; pass a checkpoint folder in the Hugging Face layout")
    try:
        return json.loads(path.read_text())
    except json.JSONDecodeError as e:
        raise Owl3Error(f"{path} is not valid JSON ({e})") from None


def parse_hyper_layers(text: str | Any) -> tuple[int, ...]:
    if isinstance(text, str):
        try:
            return tuple(int(x) for x in text.replace(" ", "").split(",") if x)
        except ValueError:
            raise Owl3Error(
                f"--hyper-layers takes 1-based layer numbers like 1,9,17,25, got {text!r}"
            ) from None
    return tuple(int(x) for x in text)


def text_config(d: dict[str, Any], hyper_layers: tuple[int, ...]) -> TextConfig:
    """TextConfig of a Qwen2/Llama-family config.json (transformers v4 or v5 keys)."""
    kind = d.get("model_type")
    if kind not in LLM_TYPES:
        raise Owl3Error(
            f"the LLM has model_type {kind!r}; owl3 build takes {', '.join(LLM_TYPES)} checkpoints"
        )
    if d.get("hidden_act", "silu") != "silu":
        raise Owl3Error(f"the LLM uses hidden_act {d.get('hidden_act')!r}; owl3's decoder implements silu")
    rope = d.get("rope_parameters") or {}
    scaling = d.get("rope_scaling") or (rope if rope.get("rope_type", "default") != "default" else None)
    if scaling and scaling.get("rope_type", scaling.get("type")) not in (None, "default"):
        raise Owl3Error(f"the LLM uses RoPE scaling {scaling}; owl3 implements plain RoPE only")
    if d.get("use_sliding_window") or (kind == "mistral" and d.get("sliding_window") is not None):
        raise Owl3Error("the LLM uses sliding-window attention; owl3's decoder attends to the whole sequence")
    if d.get("mlp_bias"):
        raise Owl3Error("the LLM has MLP biases (mlp_bias: true); owl3's decoder has none")
    try:
        n_heads, dim = d["num_attention_heads"], d["hidden_size"]
        cfg = TextConfig(
            vocab_size=d["vocab_size"],
            dim=dim,
            hidden_dim=d["intermediate_size"],
            n_layers=d["num_hidden_layers"],
            n_heads=n_heads,
            n_kv_heads=d.get("num_key_value_heads") or n_heads,
            head_dim=d.get("head_dim") or dim // n_heads,
            rope_theta=float(d.get("rope_theta") or rope.get("rope_theta") or 10000.0),
            rms_norm_eps=float(d.get("rms_norm_eps", 1e-6)),
            max_position_embeddings=d.get("max_position_embeddings", 32768),
            tie_word_embeddings=bool(d.get("tie_word_embeddings", False)),
            hyper_layers=hyper_layers,
        )
    except KeyError as e:
        raise Owl3Error(f"the LLM's config.json lacks {e.args[0]!r}") from None
    bad = [x for x in hyper_layers if not 1 <= x <= cfg.n_layers]
    if not hyper_layers or bad or len(set(hyper_layers)) != len(hyper_layers):
        raise Owl3Error(
            f"--hyper-layers must be distinct layer numbers in 1..{cfg.n_layers} (1-based), "
            f"got {list(hyper_layers)}"
        )
    return replace(cfg, hyper_layers=tuple(sorted(hyper_layers)))


def vision_config(d: dict[str, Any]) -> VisionConfig:
    kind = d.get("model_type")
    if kind == "siglip":
        d = d.get("vision_config") or {}
    elif kind != "siglip_vision_model":
        raise Owl3Error(f"the vision checkpoint has model_type {kind!r}; owl3 build takes SigLIP (siglip)")
    v = {**SIGLIP_DEFAULTS, **d}
    if v["hidden_act"] != "gelu_pytorch_tanh" or v["num_channels"] != 3:
        raise Owl3Error("the SigLIP tower must use gelu_pytorch_tanh and 3 input channels")
    return VisionConfig(
        dim=v["hidden_size"],
        hidden_dim=v["intermediate_size"],
        n_layers=v["num_hidden_layers"],
        n_heads=v["num_attention_heads"],
        patch_size=v["patch_size"],
        image_size=v["image_size"],
        layer_norm_eps=float(v["layer_norm_eps"]),
    )


def read_tensors(folder: Path) -> dict[str, Tensor]:
    if (
        not (folder / "model.safetensors").is_file()
        and not (folder / "model.safetensors.index.json").is_file()
    ):
        raise Owl3Error(f"{folder} has no model.safetensors (or index); owl3 build reads safetensors only")
    out: dict[str, Tensor] = {}
    by_file: dict[Path, list[str]] = {}
    for name, file in weight_files(folder).items():
        by_file.setdefault(file, []).append(name)
    for file, names in by_file.items():
        with safe_open(file, "pt", device="cpu") as f:
            for name in names:
                out[name] = f.get_tensor(name)
    return out


def llm_state(folder: Path, cfg: TextConfig) -> dict[str, Tensor]:
    """The LLM's weights under owl3 names (`language_model.*`), Llama's missing q/k/v biases as zeros."""
    out: dict[str, Tensor] = {}
    for name, t in read_tensors(folder).items():
        if name.endswith(IGNORED_LLM):
            continue
        if name.endswith("self_attn.o_proj.bias"):
            if t.abs().max() > 0:
                raise Owl3Error(f"the LLM has a non-zero {name}; owl3's o_proj has no bias")
            continue
        if not name.startswith(("model.", "lm_head.")):
            raise Owl3Error(f"unexpected tensor {name!r} in the LLM checkpoint")
        out["language_model." + name] = t
    for i in range(cfg.n_layers):
        for proj, width in (("q_proj", cfg.n_heads), ("k_proj", cfg.n_kv_heads), ("v_proj", cfg.n_kv_heads)):
            base = f"language_model.model.layers.{i}.self_attn.{proj}"
            if f"{base}.weight" in out and f"{base}.bias" not in out:
                out[f"{base}.bias"] = out[f"{base}.weight"].new_zeros(width * cfg.head_dim)
    if cfg.tie_word_embeddings:
        out.pop("language_model.lm_head.weight", None)
    return out


def vision_state(folder: Path) -> dict[str, Tensor]:
    return {
        n: t
        for n, t in read_tensors(folder).items()
        if n.startswith("vision_model.") and not n.startswith(IGNORED_VISION)
    }


def prepare_tokenizer(
    folder: Path, variant: str = "240728"
) -> tuple[tokenizers.Tokenizer, dict[str, int], list[str]]:
    """The LLM's tokenizer with the chat and image special tokens (and 241101's template tokens); their
    ids; the ones added."""
    file = folder / "tokenizer.json"
    if not file.is_file():
        raise Owl3Error(f"{folder} has no tokenizer.json; owl3 needs the fast-tokenizer file of the LLM")
    tok = tokenizers.Tokenizer.from_file(str(file))
    wanted = SPECIAL_TOKENS + (VARIANT_241101_TOKENS if variant == "241101" else ())
    added = [t for t in wanted if tok.token_to_id(t) is None]
    if added:
        tok.add_special_tokens([tokenizers.AddedToken(t, special=True, normalized=False) for t in added])
    return tok, {t: tok.token_to_id(t) for t in wanted}, added


def _grow(t: Tensor, rows: int) -> Tensor:
    """(V, D) -> (rows, D); new rows = mean of the old ones."""
    if t.shape[0] >= rows:
        return t
    extra = t.float().mean(0, keepdim=True).expand(rows - t.shape[0], -1).to(t.dtype)
    return torch.cat([t, extra])


def hyper_init(state: dict[str, Tensor], cfg: TextConfig, gate_bias: float | None) -> None:
    """v_kv_proj from k/v_proj of the same layer, in the official channel layout; gate weight 0, bias
    (no gate with `gate_bias` None: the 241101 family)."""
    kv, d = cfg.n_kv_heads, cfg.head_dim
    for i in range(cfg.n_layers):
        if not cfg.is_hyper(i):
            continue
        p = f"language_model.model.layers.{i}.self_attn."
        k_w, v_w = state[p + "k_proj.weight"], state[p + "v_proj.weight"]  # (kv*d, D)
        k_b, v_b = state[p + "k_proj.bias"], state[p + "v_proj.bias"]  # (kv*d,)
        # channel (h * 2 + j) * d + e: kv head h, j = 0 key / 1 value
        state[p + "v_kv_proj.weight"] = torch.stack([k_w.view(kv, d, -1), v_w.view(kv, d, -1)], 1).reshape(
            2 * kv * d, -1
        )
        state[p + "v_kv_proj.bias"] = torch.stack([k_b.view(kv, d), v_b.view(kv, d)], 1).reshape(2 * kv * d)
        if gate_bias is None:
            continue
        state[p + "gate_proj.0.weight"] = k_w.new_zeros(d, d)
        state[p + "gate_proj.0.bias"] = k_w.new_full((d,), gate_bias)


def build_model(
    llm: str | Path,
    vision: str | Path,
    output: str | Path,
    *,
    hyper_layers: str | tuple[int, ...] = (1, 9, 17, 25),
    gate_bias: float = GATE_BIAS,
    dtype: str | None = None,
    seed: int = 0,
    variant: str = "240728",
    vision_batch_size: int | None = None,
) -> Path:
    """Write a new mPLUG-Owl3 checkpoint folder of family `variant` to `output`; returns its path."""
    llm_dir, vis_dir, out = Path(llm), Path(vision), Path(output)
    if variant not in VARIANTS:
        raise Owl3Error(f"unknown variant {variant!r}; choose 240728 or 241101")
    if vision_batch_size is not None and variant != "241101":
        raise Owl3Error("--vision-batch-size is a 241101 field; add --variant 241101 or leave it out")
    if out.exists() and any(out.iterdir()):
        raise Owl3Error(f"output folder {str(out)!r} exists and is not empty; choose a new folder")
    text = text_config(_json(llm_dir / "config.json"), parse_hyper_layers(hyper_layers))
    vcfg = vision_config(_json(vis_dir / "config.json"))
    tok, ids, added = prepare_tokenizer(llm_dir, variant)
    rows = max(text.vocab_size, max(ids.values()) + 1)
    extra = {"vision_batch_size": vision_batch_size} if variant == "241101" else {}
    cfg = Owl3Config.of_variant(
        variant,
        text=replace(text, vocab_size=rows),
        vision=vcfg,
        bos_token_id=ids[END_OF_TEXT],
        eos_token_id=ids[IM_END],
        **extra,
    )

    state = llm_state(llm_dir, text)
    for name in ("language_model.model.embed_tokens.weight", "language_model.lm_head.weight"):
        if name in state:
            state[name] = _grow(state[name], rows)
    hyper_init(state, cfg.text, gate_bias if variant == "240728" else None)
    state.update(vision_state(vis_dir))
    torch.manual_seed(seed)
    if variant == "240728":
        projector: nn.Module = nn.Linear(vcfg.dim, text.dim)
    else:  # the 241101 projector: Linear, GELU, Linear (checkpoint names vision2text_model.0/2)
        projector = nn.Sequential(nn.Linear(vcfg.dim, text.dim), nn.GELU(), nn.Linear(text.dim, text.dim))
    for name, t in projector.state_dict().items():
        state["vision2text_model." + name] = t.detach()
    _check(state, cfg)

    torch_dtype = _dtype(dtype, state["language_model.model.embed_tokens.weight"].dtype)
    state = {n: t.to(torch_dtype) for n, t in state.items()}
    tmp = out.with_name(out.name + ".building")
    if tmp.exists():
        shutil.rmtree(tmp)
    from owl3.checkpoint import save_model

    save_model(StateView(cfg, state), tmp, dtype=torch_dtype)
    _write_tokenizer(tmp, llm_dir, tok, ids, added)
    meta = json.loads((tmp / "config.json").read_text())
    meta["owl3_build"] = {
        "llm": str(llm_dir),
        "vision": str(vis_dir),
        "variant": variant,
        "gate_bias": gate_bias if variant == "240728" else None,
        "added_tokens": added,
        "llm_vocab_rows": text.vocab_size,
    }
    (tmp / "config.json").write_text(json.dumps(meta, indent=2))
    if out.exists():
        out.rmdir()  # empty, checked above
    tmp.rename(out)
    return out


def _dtype(name: str | None, default: torch.dtype) -> torch.dtype:
    if name is None:
        return default
    from owl3.checkpoint import parse_dtype

    return parse_dtype(name)


def _check(state: dict[str, Tensor], cfg: Owl3Config) -> None:
    """Strict: exactly the tensors, and shapes, of an Owl3Model of `cfg`."""
    expected = {n: tuple(t.shape) for n, t in meta_model(cfg).state_dict().items()}
    if cfg.text.tie_word_embeddings:
        expected.pop("language_model.lm_head.weight")
    missing = sorted(set(expected) - set(state))
    unexpected = sorted(set(state) - set(expected))
    wrong = [n for n in expected if n in state and tuple(state[n].shape) != expected[n]]
    if missing or unexpected or wrong:
        raise Owl3Error(
            "the LLM and vision checkpoints do not make a complete model: "
            f"missing {missing[:6]}, unexpected {unexpected[:6]}, misshapen "
            f"{[(n, tuple(state[n].shape), expected[n]) for n in wrong[:4]]}"
        )


def _write_tokenizer(
    out: Path, llm_dir: Path, tok: tokenizers.Tokenizer, ids: dict[str, int], added: list[str]
) -> None:
    tok.save(str(out / "tokenizer.json"))
    tc_file = llm_dir / "tokenizer_config.json"
    tc = json.loads(tc_file.read_text()) if tc_file.is_file() else {}
    decoder = tc.setdefault("added_tokens_decoder", {})
    for t in added:
        decoder[str(ids[t])] = {
            "content": t,
            "lstrip": False,
            "normalized": False,
            "rstrip": False,
            "single_word": False,
            "special": True,
        }
    tc.pop("chat_template", None)  # owl3 applies the mPLUG-Owl3 ChatML template itself
    tc.update(eos_token=IM_END, pad_token=END_OF_TEXT)
    (out / "tokenizer_config.json").write_text(json.dumps(tc, indent=2))
    (out / "special_tokens_map.json").write_text(
        json.dumps({"eos_token": IM_END, "pad_token": END_OF_TEXT}, indent=2)
    )
    gen = {
        "bos_token_id": ids[END_OF_TEXT],
        "eos_token_id": [ids[IM_END], ids[END_OF_TEXT]],
        "pad_token_id": ids[END_OF_TEXT],
    }
    (out / "generation_config.json").write_text(json.dumps(gen, indent=2))
