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
from owl3.model.hyper import cross_scores


@contextmanager
def record_cross_attention() -> Iterator[list[Tensor]]:
    scores: list[Tensor] = []
    real = text.cross_attention

    def record(q, k, v, ctx, positions):
        scores.append(cross_scores(q, k, ctx.key_starts, positions))
        return real(q, k, v, ctx, positions)

    text.cross_attention = record
    try:
        yield scores
    finally:
        text.cross_attention = real


__all__ = ["record_cross_attention"]
