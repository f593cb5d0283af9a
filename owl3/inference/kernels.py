"""Which kernels the engine's forwards run: the compiled decode step and the attention backends.

Both are scoped: a compiled copy is made per model (the model itself is untouched), and the attention
backends are chosen for a `with` block and restored after it. Nothing here changes a process-wide setting.
"""

from __future__ import annotations

import weakref
from contextlib import AbstractContextManager, nullcontext

import torch
from torch.nn.attention import SDPBackend, sdpa_kernel

_COMPILED: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()


def compiled(model: torch.nn.Module, backend: str = "inductor") -> torch.nn.Module:
    """`torch.compile(model)` for the decode step, made once per model and backend (its graphs survive
    engines). Sizes are symbolic (`dynamic=True`): one graph serves every batch size and key window.
    `backend="eager"` checks graph capture without generating code."""
    per_model = _COMPILED.setdefault(model, {})
    if backend not in per_model:
        per_model[backend] = torch.compile(model, dynamic=True, backend=backend)
    return per_model[backend]


def attention_kernels(device: torch.device | str) -> AbstractContextManager:
    """The attention kernels of the engine's forwards: on CUDA, scaled_dot_product_attention without
    cuDNN's attention for the `with` block (the previous choice is restored on exit); elsewhere nothing.

    Recent PyTorch tries cuDNN's attention first on Hopper, and cuDNN builds an execution plan for every
    new shape (tenths of a second each). Generation makes a new shape at every decode step (the key
    length grows) and in every block of a long prefill, so those plans cost more than the attention:
    measured on an H100 (docs/performance.md), the 7B decode step ran at 62 ms/token the first time a
    length was seen and 21 ms/token once it had been. FlashAttention and the memory-efficient kernel have
    no per-shape cost.
    """
    if torch.device(device).type != "cuda":
        return nullcontext()
    return sdpa_kernel([SDPBackend.FLASH_ATTENTION, SDPBackend.EFFICIENT_ATTENTION, SDPBackend.MATH])
