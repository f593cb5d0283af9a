"""The demo model: the `demo` preset fitted to the world tokenizer, and a freshly initialized checkpoint.

`init_checkpoint(out)` writes a random-weight checkpoint folder in the official layout (config.json,
model.safetensors, tokenizer files, generation_config.json) that training starts from. Initialization
follows Qwen2/SigLIP practice (normal(0, 0.02) linears and embeddings, zero biases, unit norms) and the
paper's recipe for the hyper layers: each `v_kv_proj` starts as a copy of its layer's k_proj / v_proj.
"""

from __future__ import annotations

import json
from dataclasses import replace
from pathlib import Path

import torch
from tokenizers import Tokenizer
from torch import nn

from owl3.checkpoint import save_model
from owl3.config import Owl3Config, preset
from owl3.demo.tokenizer import build_tokenizer
from owl3.model import Owl3Model
from owl3.model.layers import RMSNorm


def demo_config(tokenizer: Tokenizer, name: str = "demo") -> Owl3Config:
    """The preset with vocab_size (padded to a multiple of 64) and bos/eos ids of `tokenizer`."""
    cfg = preset(name)
    n = tokenizer.get_vocab_size()
    vocab = -(-n // 64) * 64
    return replace(
        cfg,
        text=replace(cfg.text, vocab_size=vocab),
        bos_token_id=tokenizer.token_to_id("<|endoftext|>"),
        eos_token_id=tokenizer.token_to_id("<|im_end|>"),
    )


@torch.no_grad()
def init_weights(model: Owl3Model, seed: int = 0, std: float = 0.02) -> Owl3Model:
    gen = torch.Generator().manual_seed(seed)
    for module in model.modules():
        if isinstance(module, (nn.Linear, nn.Conv2d, nn.Embedding)):
            module.weight.copy_(torch.randn(module.weight.shape, generator=gen) * std)
            if getattr(module, "bias", None) is not None:
                module.bias.zero_()
        elif isinstance(module, (nn.LayerNorm, RMSNorm)):
            module.weight.fill_(1.0)
            if getattr(module, "bias", None) is not None:
                module.bias.zero_()
    cfg = model.cfg.text
    for layer in model.language_model.model.layers:
        attn = layer.self_attn
        if not attn.is_hyper:
            continue
        # channel layout (kv_head, {K, V}, head_dim): see docs/mplug-owl3.md §4
        w = attn.v_kv_proj.weight.view(cfg.n_kv_heads, 2, cfg.head_dim, cfg.dim)
        w[:, 0] = attn.k_proj.weight.view(cfg.n_kv_heads, cfg.head_dim, cfg.dim)
        w[:, 1] = attn.v_proj.weight.view(cfg.n_kv_heads, cfg.head_dim, cfg.dim)
        b = attn.v_kv_proj.bias.view(cfg.n_kv_heads, 2, cfg.head_dim)
        b[:, 0] = attn.k_proj.bias.view(cfg.n_kv_heads, cfg.head_dim)
        b[:, 1] = attn.v_proj.bias.view(cfg.n_kv_heads, cfg.head_dim)
    return model


@torch.no_grad()
def init_recency(
    model: Owl3Model, kv_heads: tuple[int, ...] = (0,), strength: float = 3.0, pairs: int = 3
) -> None:
    """Make the first hyper layer's query heads of `kv_heads` attend to the most recent image.

    Every text token should be able to take in the image just before it (the tokens after image k are
    where a question about Image k later finds it, docs/demo.md), but a random layer attends to all
    images alike and that pattern is slow to emerge. A constant `strength` in the `pairs` fastest MI-RoPE
    channel pairs of those heads' query bias and visual key bias gives each query a score
    strength^2 * sum_i cos(w_i * distance) / sqrt(d): highest at distance 0 (the image just before),
    ~0 four tokens further (the image before it in `Image k: <|image|>` lists). Content still adds to the
    score; training may change all of it.
    """
    cfg = model.cfg.text
    attn = next(lay.self_attn for lay in model.language_model.model.layers if lay.self_attn.is_hyper)
    d, n_rep = cfg.head_dim, cfg.n_heads // cfg.n_kv_heads
    q_bias = attn.q_proj.bias.view(cfg.n_heads, d)
    kv_bias = attn.v_kv_proj.bias.view(cfg.n_kv_heads, 2, d)  # (kv_head, {K, V}, d)
    for g in kv_heads:
        # rotate_half pairs channel i with i + d/2 at frequency theta^(-2i/d): channels 0.. are the fastest
        q_bias[g * n_rep : (g + 1) * n_rep, :pairs] = strength
        q_bias[g * n_rep : (g + 1) * n_rep, d // 2 : d // 2 + pairs] = 0.0
        kv_bias[g, 0, :pairs] = strength
        kv_bias[g, 0, d // 2 : d // 2 + pairs] = 0.0


@torch.no_grad()
def open_gates(model: Owl3Model, bias: float = 3.0) -> None:
    """Add `bias` to every hyper layer's gate bias (sigmoid(3) = 0.95: the cross-attention passes almost
    whole). A half-shut gate lets what the answer attended to (an object's place) reach the residual too
    weakly to be read (docs/demo.md)."""
    for layer in model.language_model.model.layers:
        if layer.self_attn.is_hyper:
            layer.self_attn.gate_proj[0].bias += bias


def init_checkpoint(
    out_dir: str | Path, *, seed: int = 0, tokenizer_dir: str | Path | None = None, name: str = "demo"
) -> Path:
    """Write a random-weight demo checkpoint to `out_dir`; trains the world tokenizer unless
    `tokenizer_dir` holds one. Returns the folder."""
    out = Path(out_dir)
    tok_dir = Path(tokenizer_dir) if tokenizer_dir is not None else out.with_name(out.name + ".tokenizer")
    if (tok_dir / "tokenizer.json").is_file():
        tok = Tokenizer.from_file(str(tok_dir / "tokenizer.json"))
    else:
        tok = build_tokenizer(tok_dir)
    cfg = demo_config(tok, name)
    model = init_weights(Owl3Model(cfg), seed)
    save_model(model, out, copy_from=tok_dir)
    gen = {"bos_token_id": cfg.bos_token_id, "eos_token_id": cfg.eos_token_id}
    (out / "generation_config.json").write_text(json.dumps(gen, indent=2) + "\n")
    if tokenizer_dir is None:  # the tokenizer lives in the checkpoint now; drop the scratch copy
        for f in tok_dir.iterdir():
            f.unlink()
        tok_dir.rmdir()
    return out


def n_params(model: nn.Module) -> int:
    return sum(p.numel() for p in {id(p): p for p in model.parameters()}.values())
