"""Building blocks shared by the decoder: RMSNorm, rotate-half RoPE, SwiGLU, repeat_kv.

Numerics follow Qwen2 in transformers (RMSNorm and the rotation tables in float32), because parity
with the official implementation is measured to ~1e-6.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn


class RMSNorm(nn.Module):
    def __init__(self, dim: int, eps: float = 1e-6) -> None:
        super().__init__()
        self.weight = nn.Parameter(torch.ones(dim))
        self.eps = eps

    def forward(self, x: Tensor) -> Tensor:
        # normalized in float32, rounded to the input dtype, then scaled: Qwen2's order of operations
        dtype = x.dtype
        return self.weight * F.rms_norm(x.float(), (x.shape[-1],), eps=self.eps).to(dtype)


class RotaryEmbedding(nn.Module):
    """cos/sin tables for integer positions, computed in float32 (rotate-half convention)."""

    def __init__(self, head_dim: int, theta: float) -> None:
        super().__init__()
        # a plain tensor, not a buffer: models are built on the meta device and this must stay real
        exponent = torch.arange(0, head_dim, 2, dtype=torch.int64, device="cpu").float() / head_dim
        self._inv_freq = 1.0 / (theta**exponent)
        self._by_device: dict[torch.device, Tensor] = {}

    def inv_freq(self, device: torch.device) -> Tensor:
        if device not in self._by_device:
            self._by_device[device] = self._inv_freq.to(device)
        return self._by_device[device]

    def forward(self, positions: Tensor, dtype: torch.dtype) -> tuple[Tensor, Tensor]:
        # positions (B, T) int -> cos, sin (B, T, head_dim)
        freqs = positions.float()[..., None] * self.inv_freq(positions.device)
        emb = torch.cat((freqs, freqs), dim=-1)
        return emb.cos().to(dtype), emb.sin().to(dtype)


def rotate_half(x: Tensor) -> Tensor:
    x1, x2 = x.chunk(2, dim=-1)
    return torch.cat((-x2, x1), dim=-1)


def apply_rope(x: Tensor, cos: Tensor, sin: Tensor) -> Tensor:
    # x (B, H, T, d); cos/sin (B, T, d)
    cos, sin = cos[:, None], sin[:, None]
    return x * cos + rotate_half(x) * sin


class Rotate(nn.Module):
    """RoPE on the tensors a layer goes on with (`apply_rope`, cos/sin from the caller); no parameters.

    A module rather than a call so that forward hooks can read exactly the rotated queries and keys the
    attention itself uses (owl3/model/capture.py): a loss on them (training's attention targets) joins
    the gradient at the very tensor the attention's own gradient reaches, and with no hook on it costs one
    module call. `float32`: rotate in float32 and round back to each tensor's dtype (the visual keys)."""

    def __init__(self, float32: bool = False) -> None:
        super().__init__()
        self.float32 = float32

    def forward(self, cos: Tensor, sin: Tensor, *xs: Tensor) -> tuple[Tensor, ...]:
        if self.float32:
            return tuple(apply_rope(x.float(), cos, sin).to(x.dtype) for x in xs)
        return tuple(apply_rope(x, cos, sin) for x in xs)


def repeat_kv(x: Tensor, n_rep: int) -> Tensor:
    # (B, kv, T, d) -> (B, kv * n_rep, T, d); query head h reads kv head h // n_rep
    if n_rep == 1:
        return x
    b, kv, t, d = x.shape
    return x[:, :, None].expand(b, kv, n_rep, t, d).reshape(b, kv * n_rep, t, d)


def attend_grouped(q: Tensor, k: Tensor, v: Tensor, mask: Tensor | None) -> Tensor:
    """Attention of a single query position per head, grouped-query style, without copying k/v.

    q (B, H, 1, d); k, v (B, kv, S, d); mask None or bool broadcastable to (B, 1, 1, S).
    The n_rep = H / kv query heads that read kv head g are heads g*n_rep .. g*n_rep + n_rep - 1
    (the repeat_kv convention), so q viewed as (B, kv, n_rep, d) lines them up with their kv head.
    """
    b, h, _, d = q.shape
    kv = k.shape[1]
    out = F.scaled_dot_product_attention(q.view(b, kv, h // kv, d), k, v, attn_mask=mask)
    return out.reshape(b, h, 1, d)


class SwiGLU(nn.Module):
    def __init__(self, dim: int, hidden_dim: int) -> None:
        super().__init__()
        self.gate_proj = nn.Linear(dim, hidden_dim, bias=False)
        self.up_proj = nn.Linear(dim, hidden_dim, bias=False)
        self.down_proj = nn.Linear(hidden_dim, dim, bias=False)

    def forward(self, x: Tensor) -> Tensor:
        return self.down_proj(F.silu(self.gate_proj(x)) * self.up_proj(x))


def causal_mask(key_valid: Tensor, q_len: int) -> Tensor:
    """Bool mask (B, 1, L, S) for the last `q_len` of S key slots: causal, minus invalid (padding) keys.

    A query always sees its own slot, so a padding row is never fully masked (its output is unused).
    """
    b, s = key_valid.shape
    q_slot = torch.arange(s - q_len, s, device=key_valid.device)[:, None]  # (L, 1)
    k_slot = torch.arange(s, device=key_valid.device)[None, :]  # (1, S)
    mask = (k_slot <= q_slot)[None] & key_valid[:, None, :]
    return (mask | (k_slot == q_slot)[None])[:, None]
