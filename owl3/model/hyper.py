"""Hyper Attention: the visual branch that runs in parallel with self-attention in a hyper layer.

Visual tokens never enter the text sequence. Per request, each hyper layer turns the projected visual
features into keys and values once (shared input RMSNorm -> v_kv_proj -> MI-RoPE on the keys) and keeps
them in `VisualContext.kv`; every later forward of the same request (each decode step) reuses them.
The official code recomputes them at every decode step; the results are identical (`recompute=True`
reproduces that cost for benchmarks).

This file holds the math of the cross branch only; the decoder layer wires it in (model/text.py).
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from owl3.model.layers import RotaryEmbedding, apply_rope, repeat_kv

# key_starts value of a padding visual token: larger than any query position, so never visible
NEVER = 2**62


@dataclass
class VisualContext:
    """The visual side of one batch of requests.

    features:   (B, M, D) projected visual tokens, images of a sample concatenated, right-padded
    key_starts: (B, M) int64, s_k of the image each token belongs to (NEVER for padding). Query
                position p sees the token iff s_k < p (gated variant; strict).
    positions:  (B, M) int64, MI-RoPE position of each token: s_k + 1 (gated variant)
    kv:         per hyper layer, the rotated keys and the values (B, kv_heads, M, d), filled lazily
    recompute:  recompute kv at every forward, as the official code does (benchmarks only)
    """

    features: Tensor
    key_starts: Tensor
    positions: Tensor
    kv: dict[int, tuple[Tensor, Tensor]] = field(default_factory=dict)
    recompute: bool = False

    @classmethod
    def build(cls, features: list[Tensor | None], starts: list[list[int]], offset: int = 1) -> VisualContext:
        """Pack per-sample features (n_img, T, D) and image-token indices s_k into a padded batch."""
        ref = next(f for f in features if f is not None)
        t, d = ref.shape[1], ref.shape[2]
        m = max((0 if f is None else f.shape[0] * t) for f in features)
        b = len(features)
        feats = ref.new_zeros(b, m, d)
        key_starts = torch.full((b, m), NEVER, dtype=torch.long, device=ref.device)
        positions = torch.zeros((b, m), dtype=torch.long, device=ref.device)
        for i, (f, s) in enumerate(zip(features, starts, strict=True)):
            if f is None or f.shape[0] == 0:
                continue
            if f.shape[0] != len(s):
                raise ValueError(f"sample {i}: {f.shape[0]} images but {len(s)} image tokens")
            n = f.shape[0] * t
            feats[i, :n] = f.reshape(n, d)
            s_t = torch.tensor(s, dtype=torch.long, device=ref.device).repeat_interleave(t)
            key_starts[i, :n] = s_t
            positions[i, :n] = s_t + offset
        return cls(feats, key_starts, positions)

    @property
    def n_tokens(self) -> int:
        return self.features.shape[1]


def visual_kv(
    ctx: VisualContext,
    layer_idx: int,
    norm: nn.Module,
    v_kv_proj: nn.Linear,
    rope: RotaryEmbedding,
    n_kv_heads: int,
    head_dim: int,
) -> tuple[Tensor, Tensor]:
    """Rotated visual keys and values of one hyper layer, computed once per request."""
    if not ctx.recompute and layer_idx in ctx.kv:
        return ctx.kv[layer_idx]
    b, m, _ = ctx.features.shape
    kv = v_kv_proj(norm(ctx.features))  # (B, M, kv * 2 * d), channel (h * 2 + j) * d + e
    kv = kv.view(b, m, n_kv_heads, 2, head_dim).permute(3, 0, 2, 1, 4)  # (2, B, kv, M, d)
    k, v = kv[0], kv[1]
    # MI-RoPE: every token of image k rotated by one position; computed and applied in float32
    cos, sin = rope(ctx.positions, torch.float32)
    k = apply_rope(k.float(), cos, sin).to(v.dtype)
    if not ctx.recompute:
        ctx.kv[layer_idx] = (k.contiguous(), v.contiguous())
    return k, v


def cross_attention(
    q: Tensor, k: Tensor, v: Tensor, key_starts: Tensor, positions: Tensor
) -> tuple[Tensor, Tensor]:
    """Text queries over visual keys.

    q (B, H, L, d) already rotated; k, v (B, kv, M, d); key_starts (B, M); positions (B, L).
    Returns the attention output (B, H, L, d) and `seen` (B, L): whether each query saw any image.
    """
    mask = key_starts[:, None, :] < positions[:, :, None]  # (B, L, M)
    seen = mask.any(-1)  # (B, L)
    # a row that sees nothing would softmax over -inf; let it see everything and discard it later
    mask = mask | ~seen[..., None]
    n_rep = q.shape[1] // k.shape[1]
    out = F.scaled_dot_product_attention(q, repeat_kv(k, n_rep), repeat_kv(v, n_rep), attn_mask=mask[:, None])
    return out, seen


def gate(a_self: Tensor, a_cross: Tensor, seen: Tensor, gate_proj: nn.Module) -> Tensor:
    """Adaptive gate, one Linear(d, d) shared by all heads.

    a_self, a_cross (B, H, L, d); seen (B, L). Rows that saw no image keep a_self, ungated.
    """
    g = gate_proj(a_self)  # sigmoid inside gate_proj
    mixed = a_self * (1 - g) + a_cross * g
    return torch.where(seen[:, None, :, None], mixed, a_self)
