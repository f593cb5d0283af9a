"""`owl3 build`: tiny Qwen2- and Llama-style LLMs and a SigLIP tower, written here in the Hugging Face
layout, become mPLUG-Owl3 models whose text-only logits equal the LLM's, that see images from a gate
that starts almost closed, and that load and train with owl3."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from safetensors import safe_open
from safetensors.torch import save_file

import owl3
from owl3 import Owl3Error
from owl3.cli import main
from owl3.config import TextConfig
from owl3.model.text import Qwen2ForCausalLM
from owl3.training import TrainConfig, build_model, train
from owl3.training.build import GATE_BIAS
from tests.train_helpers import FIXTURE, IMAGES

SPECIALS = ("<|endoftext|>", "<|im_start|>", "<|im_end|>", "<|image|>")
PROMPT = "The cat sat on the mat. A story about a brown dog"


def _fixture_tensors() -> dict[str, torch.Tensor]:
    with safe_open(FIXTURE / "model.safetensors", "pt") as f:
        return {n: f.get_tensor(n) for n in f.keys()}


def _tokenizer_without(folder: Path, drop: tuple[str, ...]) -> None:
    tok = json.loads((FIXTURE / "tokenizer.json").read_text())
    tok["added_tokens"] = [t for t in tok["added_tokens"] if t["content"] not in drop]
    (folder / "tokenizer.json").write_text(json.dumps(tok))
    tc = json.loads((FIXTURE / "tokenizer_config.json").read_text())
    tc["added_tokens_decoder"] = {
        k: v for k, v in tc["added_tokens_decoder"].items() if v["content"] not in drop
    }
    (folder / "tokenizer_config.json").write_text(json.dumps(tc))


@pytest.fixture(scope="module")
def qwen2(tmp_path_factory) -> Path:
    """The fixture's LLM as a Qwen2 checkpoint (v4-style config, two shards), without the <|image|> token."""
    d = tmp_path_factory.mktemp("qwen2")
    t = {
        n.removeprefix("language_model."): v
        for n, v in _fixture_tensors().items()
        if n.startswith("language_model.") and ".v_kv_proj." not in n and ".self_attn.gate_proj." not in n
    }
    names = sorted(t)
    shards = {"model-00001-of-00002.safetensors": names[::2], "model-00002-of-00002.safetensors": names[1::2]}
    for file, keys in shards.items():
        save_file({k: t[k].contiguous() for k in keys}, d / file)
    index = {
        "metadata": {"total_size": sum(v.numel() * 4 for v in t.values())},
        "weight_map": {k: f for f, keys in shards.items() for k in keys},
    }
    (d / "model.safetensors.index.json").write_text(json.dumps(index))
    cfg = {
        "architectures": ["Qwen2ForCausalLM"],
        "model_type": "qwen2",
        "vocab_size": 488,
        "hidden_size": 64,
        "intermediate_size": 128,
        "num_hidden_layers": 4,
        "num_attention_heads": 4,
        "num_key_value_heads": 2,
        "rope_theta": 1e6,
        "rms_norm_eps": 1e-6,
        "max_position_embeddings": 4096,
        "hidden_act": "silu",
        "tie_word_embeddings": False,
        "use_sliding_window": False,
        "torch_dtype": "float32",
    }
    (d / "config.json").write_text(json.dumps(cfg))
    _tokenizer_without(d, ("<|image|>",))
    return d


@pytest.fixture(scope="module")
def llama(tmp_path_factory) -> Path:
    """A random Llama (no biases, tied embeddings, rope_theta 5e5, eps 1e-5, transformers-v5 config keys)
    whose tokenizer and 420-row embedding know none of the chat/image special tokens."""
    d = tmp_path_factory.mktemp("llama")
    g = torch.Generator().manual_seed(0)

    def w(*shape):
        return torch.randn(*shape, generator=g) * 0.08

    t = {"model.embed_tokens.weight": w(420, 64), "model.norm.weight": 1 + w(64)}
    for i in range(2):
        p = f"model.layers.{i}."
        t |= {
            p + "self_attn.q_proj.weight": w(64, 64),
            p + "self_attn.k_proj.weight": w(32, 64),
            p + "self_attn.v_proj.weight": w(32, 64),
            p + "self_attn.o_proj.weight": w(64, 64),
            p + "mlp.gate_proj.weight": w(128, 64),
            p + "mlp.up_proj.weight": w(128, 64),
            p + "mlp.down_proj.weight": w(64, 128),
            p + "input_layernorm.weight": 1 + w(64),
            p + "post_attention_layernorm.weight": 1 + w(64),
        }
    save_file(t, d / "model.safetensors")
    cfg = {
        "architectures": ["LlamaForCausalLM"],
        "model_type": "llama",
        "vocab_size": 420,
        "hidden_size": 64,
        "intermediate_size": 128,
        "num_hidden_layers": 2,
        "num_attention_heads": 4,
        "num_key_value_heads": 2,
        "head_dim": 16,
        "rope_parameters": {"rope_theta": 5e5, "rope_type": "default"},
        "rms_norm_eps": 1e-5,
        "max_position_embeddings": 2048,
        "hidden_act": "silu",
        "tie_word_embeddings": True,
        "attention_bias": False,
        "mlp_bias": False,
        "bos_token_id": 1,
        "eos_token_id": 2,
    }
    (d / "config.json").write_text(json.dumps(cfg))
    _tokenizer_without(d, SPECIALS)
    return d


@pytest.fixture(scope="module")
def siglip(tmp_path_factory) -> Path:
    """The fixture's vision tower as a SiglipModel checkpoint (with a text tower and logit scale to drop)."""
    d = tmp_path_factory.mktemp("siglip")
    t = {n: v for n, v in _fixture_tensors().items() if n.startswith("vision_model.")}
    t |= {
        "text_model.embeddings.token_embedding.weight": torch.randn(100, 32),
        "logit_scale": torch.ones(1),
        "logit_bias": torch.zeros(1),
    }
    save_file(t, d / "model.safetensors")
    cfg = {
        "model_type": "siglip",
        "vision_config": {
            "hidden_size": 32,
            "intermediate_size": 64,
            "num_hidden_layers": 3,
            "num_attention_heads": 4,
            "image_size": 56,
            "patch_size": 14,
        },
        "text_config": {"hidden_size": 32, "vocab_size": 100},
    }
    (d / "config.json").write_text(json.dumps(cfg))
    return d


def _llm_reference(llm: Path, text: TextConfig) -> Qwen2ForCausalLM:
    """owl3's plain decoder (no hyper layers) with the LLM's own weights: the LLM's logits."""
    from owl3.training.build import llm_state

    cfg = TextConfig(**{**text.__dict__, "hyper_layers": ()})
    ref = Qwen2ForCausalLM(cfg)
    state = {n.removeprefix("language_model."): v for n, v in llm_state(llm, cfg).items()}
    if cfg.tie_word_embeddings:
        state["lm_head.weight"] = state["model.embed_tokens.weight"]
    ref.load_state_dict(state, strict=True)
    return ref.eval()


def _text_logits(model, ids: torch.Tensor) -> torch.Tensor:
    with torch.no_grad():
        return model(ids[None])[0]


def test_qwen2_build_keeps_the_llm_and_loads(qwen2, siglip, tmp_path):
    out = build_model(qwen2, siglip, tmp_path / "owl", hyper_layers="1,3")
    pipe = owl3.load(out)
    cfg = pipe.model.cfg
    assert cfg.text.hyper_layers == (1, 3) and cfg.text.vocab_size == 488 and cfg.vision.image_size == 56
    assert pipe.processor.image_token_id == 423  # <|image|> re-added after the 423 existing tokens
    ids = torch.tensor(pipe.tokenizer.encode(PROMPT, add_special_tokens=False).ids)
    ref = _llm_reference(qwen2, cfg.text)
    with torch.no_grad():
        llm_logits = ref.lm_head(ref.model(ref.model.embed_tokens(ids[None]), torch.arange(len(ids))[None]))[
            0
        ]
    assert torch.equal(_text_logits(pipe.model, ids), llm_logits)  # exactly the LLM
    # v_kv_proj = [k_proj; v_proj] per kv head; the gate starts at sigmoid(GATE_BIAS)
    attn = pipe.model.language_model.model.layers[2].self_attn
    x = torch.randn(5, 64)
    kv = attn.v_kv_proj(x).view(5, 2, 2, 16)  # (tokens, kv head, {K, V}, d)
    torch.testing.assert_close(kv[:, :, 0].reshape(5, 32), attn.k_proj(x))
    torch.testing.assert_close(kv[:, :, 1].reshape(5, 32), attn.v_proj(x))
    assert torch.allclose(attn.gate_proj(torch.randn(3, 16)), torch.sigmoid(torch.tensor(GATE_BIAS)))
    # the vision tower is SigLIP's, unchanged
    with safe_open(siglip / "model.safetensors", "pt") as f:
        w = f.get_tensor("vision_model.encoder.layers.1.mlp.fc1.weight")
    assert torch.equal(pipe.model.vision_model.encoder.layers[1].mlp.fc1.weight, w)
    meta = json.loads((out / "config.json").read_text())
    assert meta["owl3_build"]["added_tokens"] == ["<|image|>"]


def test_images_start_close_to_the_text_only_model(qwen2, siglip, tmp_path):
    closed = owl3.load(build_model(qwen2, siglip, tmp_path / "closed", hyper_layers="1,3"))
    opened = owl3.load(build_model(qwen2, siglip, tmp_path / "open", hyper_layers="1,3", gate_bias=0.0))
    msgs = "Image 1: <|image|> Image 2: <|image|> Which one is red?"
    images = [IMAGES / "m1.png", IMAGES / "m2.png"]
    enc = closed.encode(msgs, images)
    text_only = _text_logits(closed.model, enc.input_ids)  # same ids, no visual features
    diff_closed = (closed.logits(msgs, images) - text_only).abs().max()
    diff_open = (opened.logits(msgs, images) - text_only).abs().max()
    scale = text_only.abs().max()
    assert 0 < diff_closed < 0.01 * scale  # the images are seen, barely: the LLM is kept
    assert diff_open > 20 * diff_closed  # a gate at 0.5 (the official random init) would not keep it


def test_llama_build_adds_biases_tokens_and_rows(llama, siglip, tmp_path):
    out = build_model(llama, siglip, tmp_path / "owl", hyper_layers=[2])
    pipe = owl3.load(out)
    t = pipe.model.cfg.text
    assert (t.rope_theta, t.rms_norm_eps, t.tie_word_embeddings, t.vocab_size) == (5e5, 1e-5, True, 424)
    assert [pipe.tokenizer.token_to_id(s) for s in SPECIALS] == [420, 421, 422, 423]
    assert (pipe.model.cfg.bos_token_id, pipe.model.cfg.eos_token_id) == (420, 422)
    attn = pipe.model.language_model.model.layers[0].self_attn
    assert not attn.q_proj.bias.any() and not attn.k_proj.bias.any()
    emb = pipe.model.language_model.model.embed_tokens.weight
    torch.testing.assert_close(emb[420:], emb[:420].mean(0).expand(4, -1))  # new rows: the mean row
    ids = torch.tensor(pipe.tokenizer.encode(PROMPT, add_special_tokens=False).ids)
    ref = _llm_reference(llama, TextConfig(**{**t.__dict__, "vocab_size": 420}))
    with torch.no_grad():
        llm_logits = ref.lm_head(ref.model(ref.model.embed_tokens(ids[None]), torch.arange(len(ids))[None]))[
            0
        ]
    torch.testing.assert_close(_text_logits(pipe.model, ids)[:, :420], llm_logits, atol=1e-6, rtol=0)
    assert "Hi" in pipe.processor.render([{"role": "user", "content": "Hi"}])  # the chat template tokenizes
    pipe.chat("Describe.", images=[IMAGES / "one.png"], max_new_tokens=3)


def test_logits_match_transformers(qwen2, llama, siglip, tmp_path):
    transformers = pytest.importorskip("transformers")
    for llm, cls in ((qwen2, transformers.Qwen2ForCausalLM), (llama, transformers.LlamaForCausalLM)):
        pipe = owl3.load(build_model(llm, siglip, tmp_path / llm.name, hyper_layers="1"))
        hf = cls.from_pretrained(llm, dtype=torch.float32).eval()
        ids = torch.tensor(pipe.tokenizer.encode(PROMPT, add_special_tokens=False).ids)
        with torch.no_grad():
            want = hf(ids[None]).logits[0]
        got = _text_logits(pipe.model, ids)[:, : want.shape[1]]
        torch.testing.assert_close(got, want, atol=2e-5, rtol=1e-4)
    vcfg = json.loads((siglip / "config.json").read_text())["vision_config"]
    hf_vision = transformers.SiglipVisionModel(transformers.SiglipVisionConfig(**vcfg)).eval()
    prefixed = next(iter(hf_vision.state_dict())).startswith("vision_model.")  # transformers v4; v5 drops it
    with safe_open(siglip / "model.safetensors", "pt") as f:
        hf_vision.load_state_dict(
            {
                n if prefixed else n.removeprefix("vision_model."): f.get_tensor(n)
                for n in f.keys()
                if n.startswith("vision_model.")
            }
        )
    pixels = pipe.encode("<|image|>", [IMAGES / "one.png"], cut=False).pixel_values
    with torch.no_grad():
        want = hf_vision(pixel_values=pixels, output_hidden_states=True).hidden_states[-2]
        got = pipe.model.vision_model(pixels)
    torch.testing.assert_close(got, want, atol=1e-5, rtol=1e-4)


def test_built_model_trains(qwen2, siglip, tmp_path):
    out = build_model(qwen2, siglip, tmp_path / "owl", hyper_layers="1,3")
    data = tmp_path / "d.jsonl"
    rec = {
        "messages": [
            {"role": "user", "content": "<image>What is it?"},
            {"role": "assistant", "content": "A cat."},
        ],
        "images": [str(IMAGES / "one.png")],
    }
    data.write_text(json.dumps(rec) + "\n")
    result = train(
        TrainConfig(
            model=str(out),
            data=(str(data),),
            output=str(tmp_path / "run"),
            stage="pretrain",
            max_steps=3,
            threads=1,
            progress=False,
            plot=False,
        )
    )
    assert result.losses[-1] < result.losses[0]
    owl3.load(tmp_path / "run")


def test_cli_and_refusals(qwen2, siglip, tmp_path, capsys):
    assert (
        main(
            [
                "build",
                "--llm",
                str(qwen2),
                "--vision",
                str(siglip),
                "--hyper-layers",
                "2,4",
                "--output",
                str(tmp_path / "a"),
            ]
        )
        == 0
    )
    assert owl3.load(tmp_path / "a").model.cfg.text.hyper_layers == (2, 4)
    assert (
        main(
            [
                "build",
                "--llm",
                str(qwen2),
                "--vision",
                str(siglip),
                "--hyper-layers",
                "1,9",
                "--output",
                str(tmp_path / "b"),
            ]
        )
        == 2
    )
    assert "1..4" in capsys.readouterr().err
    assert (
        main(
            [
                "build",
                "--llm",
                str(qwen2),
                "--vision",
                str(siglip),
                "--output",
                str(tmp_path / "a"),
                "--hyper-layers",
                "1",
            ]
        )
        == 2
    )  # not empty
    assert "not empty" in capsys.readouterr().err
    scaled = tmp_path / "scaled"
    scaled.mkdir()
    cfg = json.loads((qwen2 / "config.json").read_text()) | {
        "rope_scaling": {"rope_type": "yarn", "factor": 4}
    }
    (scaled / "config.json").write_text(json.dumps(cfg))
    with pytest.raises(Owl3Error, match="RoPE scaling"):
        build_model(scaled, siglip, tmp_path / "c", hyper_layers="1")
    with pytest.raises(Owl3Error, match="SigLIP"):
        build_model(qwen2, qwen2, tmp_path / "d", hyper_layers="1")


def test_build_variant_241101(qwen2, siglip, tmp_path, capsys):
    # the 241101 layout: no gate, a Linear-GELU-Linear projector, the four template tokens, vision_batch_size
    assert (
        main(
            ["build", "--llm", str(qwen2), "--vision", str(siglip), "--output", str(tmp_path / "new"),
             "--hyper-layers", "1,3", "--variant", "241101", "--vision-batch-size", "4"]
        )
        == 0
    )
    out = tmp_path / "new"
    meta = json.loads((out / "config.json").read_text())
    assert meta["vision_batch_size"] == 4 and meta["owl3_build"]["variant"] == "241101"
    with safe_open(out / "model.safetensors", "pt") as f:
        names = set(f.keys())
    assert {"vision2text_model.0.weight", "vision2text_model.2.weight"} <= names
    assert "vision2text_model.weight" not in names and not any("self_attn.gate_proj" in n for n in names)
    pipe = owl3.load(out)
    assert pipe.model.cfg.variant == "241101" and pipe.processor.variant == "241101"
    tok = pipe.tokenizer
    new = ["<|start_cut|>", "<|end_cut|>", "<|start_video_frame|>", "<|end_video_frame|>"]
    assert [tok.token_to_id(t) for t in new] == [424, 425, 426, 427]
    assert pipe.model.cfg.text.vocab_size == 488  # the new ids fit in the LLM's rows
    # text-only input still gives exactly the LLM's logits
    ids = torch.tensor(tok.encode(PROMPT, add_special_tokens=False).ids)
    ref = _llm_reference(qwen2, pipe.model.cfg.text)
    with torch.no_grad():
        llm_logits = ref.lm_head(ref.model(ref.model.embed_tokens(ids[None]), torch.arange(len(ids))[None]))
    assert torch.equal(_text_logits(pipe.model, ids), llm_logits[0])
    # images weigh in through the fused softmax from the start, and the 241101 cut template is used
    enc = pipe.encode("What is this?", [IMAGES / "wide.png"])
    assert "<|start_cut|>" in enc.prompt
    seeing = pipe.logits("What is this?", [IMAGES / "wide.png"])
    assert (seeing - _text_logits(pipe.model, enc.input_ids)).abs().max() > 1e-3
    with pytest.raises(Owl3Error, match="241101 field"):
        build_model(qwen2, siglip, tmp_path / "bad", vision_batch_size=4)
