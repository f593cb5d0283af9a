"""Text KV caches: one batch's (`KVCache`, for a single forward pass of a known size) and an engine's pool
of slots (`KVPool`, with the views a prefill chunk and a decode step see).

`KVCache`: preallocated.

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


class KVPool:
    """The text KV cache of every request an engine holds: per layer one (slots, kv_heads, capacity,
    head_dim) buffer for keys and one for values. Allocated once; its capacity (tokens per slot) starts
    small and doubles, with one copy, when a request needs more, up to `max_len`. A request keeps its slot
    while it runs; `move` relocates one (the engine keeps its decoding requests in slots 0..n-1, so a
    decode step reads a view, never a gather)."""

    def __init__(
        self,
        cfg: TextConfig,
        slots: int,
        max_len: int,
        dtype: torch.dtype,
        device: torch.device | str,
        capacity: int = 256,
    ) -> None:
        self.cfg, self.slots, self.max_len, self.dtype, self.device = cfg, slots, max_len, dtype, device
        self.capacity = min(capacity, max_len)
        self.k, self.v = self._alloc(self.capacity), self._alloc(self.capacity)

    def _alloc(self, capacity: int) -> list[Tensor]:
        shape = (self.slots, self.cfg.n_kv_heads, capacity, self.cfg.head_dim)
        return [torch.zeros(shape, dtype=self.dtype, device=self.device) for _ in range(self.cfg.n_layers)]

    def ensure(self, length: int) -> None:
        """Room for `length` tokens in every slot (grows by doubling; never past max_len)."""
        if length <= self.capacity:
            return
        if length > self.max_len:
            raise RuntimeError(f"KV pool overflow: {length} > {self.max_len}")
        cap = self.capacity
        while cap < length:
            cap *= 2
        cap = min(cap, self.max_len)
        k, v = self._alloc(cap), self._alloc(cap)
        for i in range(self.cfg.n_layers):
            k[i][:, :, : self.capacity] = self.k[i]
            v[i][:, :, : self.capacity] = self.v[i]
        self.k, self.v, self.capacity = k, v, cap

    def move(self, src: int, dst: int, length: int) -> None:
        """Copy the first `length` tokens of slot `src` to slot `dst`."""
        for buf in (*self.k, *self.v):
            buf[dst, :, :length] = buf[src, :, :length]

    def load(self, slot: int, kv: list[tuple[Tensor, Tensor]]) -> None:
        """Put saved keys/values (per layer (1, kv, P, d)) into the first P positions of `slot`."""
        if len(kv) != len(self.k):
            raise ValueError(f"{len(kv)} layers of saved keys/values for a {len(self.k)}-layer cache")
        self.ensure(kv[0][0].shape[2])
        for i, (k, v) in enumerate(kv):
            self.k[i][slot, :, : k.shape[2]] = k[0]
            self.v[i][slot, :, : v.shape[2]] = v[0]

    def read(self, slot: int, length: int) -> list[tuple[Tensor, Tensor]]:
        """Copies of the first `length` keys/values of `slot`, per layer (1, kv, length, d)."""
        return [
            (k[slot : slot + 1, :, :length].clone(), v[slot : slot + 1, :, :length].clone())
            for k, v in zip(self.k, self.v, strict=True)
        ]

    @property
    def nbytes(self) -> int:
        return sum(t.numel() * t.element_size() for t in self.k + self.v)


class SlotView:
    """The pool as the cache of one forward over one slot's tokens [start, start + T) (a prefill chunk)."""

    def __init__(self, pool: KVPool, slot: int, start: int) -> None:
        self.pool, self.slot, self.start = pool, slot, start

    def update(self, layer_idx: int, k: Tensor, v: Tensor) -> tuple[Tensor, Tensor]:
        # k, v (1, kv, T, d) -> the slot's keys/values so far (1, kv, start + T, d)
        end, s = self.start + k.shape[2], self.slot
        self.pool.k[layer_idx][s : s + 1, :, self.start : end] = k
        self.pool.v[layer_idx][s : s + 1, :, self.start : end] = v
        return self.pool.k[layer_idx][s : s + 1, :, :end], self.pool.v[layer_idx][s : s + 1, :, :end]


class RowsView:
    """The pool as the cache of one forward over prefill pieces of several slots, left-padded to one
    width: row i's real tokens are its last `counts[i]` columns and go to positions
    [starts[i], starts[i] + counts[i]) of slot `slots[i]` (padding columns are not written); every row reads
    the first `length` positions of its slot, the caller's mask hiding what a column may not see."""

    def __init__(self, pool: KVPool, slots: list[int], starts: list[int], counts: list[int]) -> None:
        self.pool, self.rows = pool, list(zip(slots, starts, counts, strict=True))
        self.length = max(s + c for s, c in zip(starts, counts, strict=True))
        self.index = torch.tensor(slots, device=pool.device)

    def update(self, layer_idx: int, k: Tensor, v: Tensor) -> tuple[Tensor, Tensor]:
        # k, v (rows, kv, width, d) -> every row's slot so far (rows, kv, length, d), gathered
        width = k.shape[2]
        pk, pv = self.pool.k[layer_idx], self.pool.v[layer_idx]
        for i, (slot, start, count) in enumerate(self.rows):
            pk[slot, :, start : start + count] = k[i, :, width - count :]
            pv[slot, :, start : start + count] = v[i, :, width - count :]
        return pk[self.index, :, : self.length], pv[self.index, :, : self.length]


class DecodeView:
    """The pool as the cache of one decode step of slots 0..n-1: row i writes its new token at
    `positions[i]` and reads the first `window` positions of its slot (the rest masked by the caller)."""

    def __init__(self, pool: KVPool, positions: Tensor, window: int) -> None:
        self.pool, self.positions, self.window = pool, positions, window
        self.rows = torch.arange(positions.shape[0], device=positions.device)

    def update(self, layer_idx: int, k: Tensor, v: Tensor) -> tuple[Tensor, Tensor]:
        # k, v (n, kv, 1, d) -> (n, kv, window, d): views of the pool, no copy
        n = k.shape[0]
        self.pool.k[layer_idx][self.rows, :, self.positions] = k[:, :, 0]
        self.pool.v[layer_idx][self.rows, :, self.positions] = v[:, :, 0]
        return self.pool.k[layer_idx][:n, :, : self.window], self.pool.v[layer_idx][:n, :, : self.window]
