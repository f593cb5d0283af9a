"""Look inside a model while it runs: the hyper layers' cross-attention scores, for probes and tests.

    with record_cross_attention() as scores:
        model(...)
    scores[i]  # (B, H, L, M) for the i-th hyper layer called: logits over the visual tokens, -inf
               # where the query may not see the token (its image starts at or after the query)

The scores keep their autograd graph (an auxiliary attention loss can be built on them); softmax them
for attention weights. owl3.model.text's cross-attention is wrapped for the block and restored after.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

from torch import Tensor

import owl3.model.text as text


@contextmanager
def record_cross_attention() -> Iterator[list[Tensor]]:
    scores: list[Tensor] = []
    real = text.cross_attention

    def record(q, k, v, ctx, positions):
        kk = k.repeat_interleave(q.shape[1] // k.shape[1], dim=1)  # (B, H, M, d)
        s = q @ kk.transpose(-1, -2) / q.shape[-1] ** 0.5  # (B, H, L, M)
        visible = ctx.key_starts[:, None, None, :] < positions[:, None, :, None]
        scores.append(s.masked_fill(~visible, float("-inf")))
        return real(q, k, v, ctx, positions)

    text.cross_attention = record
    try:
        yield scores
    finally:
        text.cross_attention = real


__all__ = ["record_cross_attention"]
