"""Preallocated text KV cache.

One (B, kv_heads, max_len, head_dim) buffer per layer for keys and one for values, allocated once per
batch; a forward writes its new keys at [length, length + T) and attends over [0, length + T). The
visual keys/values are not here: they never change during a request and live in the VisualContext.
"""

from __future__ import annotations

import torch
from torch import Tensor

from owl3.config import TextConfig


class KVCache:
    def __init__(
        self, cfg: TextConfig, batch: int, max_len: int, dtype: torch.dtype, device: torch.device | str
    ) -> None:
        shape = (batch, cfg.n_kv_heads, max_len, cfg.head_dim)
        self.k = [torch.zeros(shape, dtype=dtype, device=device) for _ in range(cfg.n_layers)]
        self.v = [torch.zeros(shape, dtype=dtype, device=device) for _ in range(cfg.n_layers)]
        self.length = 0
        self.max_len = max_len

    def update(self, layer_idx: int, k: Tensor, v: Tensor) -> tuple[Tensor, Tensor]:
        # k, v (B, kv, T, d) -> all keys/values so far (B, kv, length + T, d)
        end = self.length + k.shape[2]
        if end > self.max_len:
            raise RuntimeError(f"KV cache overflow: {end} > {self.max_len}")
        self.k[layer_idx][:, :, self.length : end] = k
        self.v[layer_idx][:, :, self.length : end] = v
        return self.k[layer_idx][:, :, :end], self.v[layer_idx][:, :, :end]

    def load_prefix(self, kv: list[tuple[Tensor, Tensor]]) -> None:
        """Start from saved keys/values (per layer (B, kv, P, d)) of the first P slots."""
        if len(kv) != len(self.k):
            raise ValueError(f"{len(kv)} layers of saved keys/values for a {len(self.k)}-layer cache")
        p = kv[0][0].shape[2]
        if p > self.max_len:
            raise RuntimeError(f"KV cache overflow: {p} > {self.max_len}")
        for i, (k, v) in enumerate(kv):
            self.k[i][:, :, :p] = k
            self.v[i][:, :, :p] = v
        self.length = p

    def advance(self, n: int) -> None:
        """Mark `n` more slots as written (call once per model forward, after all layers)."""
        self.length += n

    @property
    def nbytes(self) -> int:
        return sum(t.numel() * t.element_size() for t in self.k + self.v)
