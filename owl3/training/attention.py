"""Attention targets in training: read a layer's queries and keys through forward hooks, score them.

A target asks one query of a sample to look at given tokens: visual tokens in a hyper layer's cross branch
(`attention_loss`) or earlier text tokens in a decoder layer's self-attention (`text_attention_loss`). The
model is not told: `Readout` registers forward hooks on the layers that have targets for the length of
one forward, on their `rotate` (its outputs are the rotated queries and keys) and, for the visual keys, on
`rotate_visual`. The tensors read are the ones the attention used, with their autograd graph, so the loss
trains the projections exactly as a loss inside the forward would (also under gradient checkpointing: the
hooks are gone before the backward recomputes the layers). `Readout` and `cross_scores` live in
owl3/model/capture.py, which inference reads attention through too.
"""

from __future__ import annotations

import numpy as np
import torch
from torch import Tensor

from owl3.model.capture import Readout, cross_scores
from owl3.model.layers import repeat_kv
from owl3.training.encode import VisualTarget

__all__ = ["Readout", "attention_loss", "cross_scores", "text_attention_loss"]


def attention_loss(
    q: Tensor, k: Tensor, key_starts: Tensor, attend: list[list[VisualTarget]], offset: int = 1
) -> Tensor:
    """Sum over targets of the mean over heads of -log(attention share on the target's visual tokens), or
    for a target with shares, of the cross-entropy -sum(share x log weight) over its tokens.

    q (B, H, L, d), k (B, kv, M, d) as one hyper layer saw them; attend: per row, (query position,
    visual token indices[, the share each should get]). All targets at once (`_row_queries`)."""
    targets = [(row, t) for row, ts in enumerate(attend) for t in ts]
    if not targets:
        return q.new_zeros(())
    rows, slots, positions, qs = _row_queries(q, [(row, t[0]) for row, t in targets])
    s = cross_scores(qs, k, key_starts, positions, offset)  # (B, H, S, M)
    log_w = torch.log_softmax(s[rows, :, slots].float(), -1)  # (n, H, M)
    return _target_nll(log_w, [t[1:] for _, t in targets])


def text_attention_loss(q: Tensor, k: Tensor, attend_text: list[list[tuple]]) -> Tensor:
    """Sum over targets of the mean over heads of -log(causal self-attention share on the target tokens).

    q (B, H, T, d), k (B, kv, T, d) rotated, as one decoder layer saw them; attend_text: per row, (query
    position, text token positions before it[, the heads to average over: default all]). All targets at
    once, as `attention_loss`."""
    targets = [(row, t[0], t[1]) for row, ts in enumerate(attend_text) for t in ts]
    heads = [t[2] if len(t) > 2 else () for ts in attend_text for t in ts]
    if not targets:
        return q.new_zeros(())
    rows, slots, positions, qs = _row_queries(q, [(row, pos) for row, pos, _ in targets])
    keys = repeat_kv(k, q.shape[1] // k.shape[1])  # (B, H, T, d)
    s = (qs @ keys.transpose(-1, -2))[rows, :, slots] / q.shape[-1] ** 0.5  # (n, H, T)
    pos = positions[rows, slots]
    later = torch.arange(k.shape[2], device=q.device)[None, :] > pos[:, None]  # (n, T): not yet seen
    log_w = torch.log_softmax(s.masked_fill(later[:, None], float("-inf")).float(), -1)
    return _target_nll(log_w, [(tokens,) for _, _, tokens in targets], heads)


def _row_queries(q: Tensor, targets: list[tuple[int, int]]) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    """The query of each target (row, position), gathered per row: (rows (n,), slots (n,), positions
    (B, S), queries (B, H, S, d)), target i being slot slots[i] of row rows[i] (S: the most targets of a
    row; unused slots read position 0 and are never selected). One gather, so the backward writes one
    gradient buffer for q, and the keys are scored per row as they are, never copied per target."""
    used: dict[int, int] = {}
    slots = []
    for row, _ in targets:
        slots.append(used.get(row, 0))
        used[row] = slots[-1] + 1
    b, h, _, d = q.shape
    positions = torch.zeros(b, max(used.values()), dtype=torch.long, device=q.device)
    rows = torch.tensor([row for row, _ in targets], device=q.device)
    slot = torch.tensor(slots, device=q.device)
    positions[rows, slot] = torch.tensor([pos for _, pos in targets], device=q.device)
    qs = q.gather(2, positions[:, None, :, None].expand(b, h, -1, d))
    return rows, slot, positions, qs


def _target_nll(log_w: Tensor, targets: list[tuple], heads: list[tuple[int, ...]] | None = None) -> Tensor:
    """log_w (n, H, M) log attention weights of n target queries; targets[i] = (tokens,) or (tokens,
    shares) -> the sum over targets of the mean over heads (over `heads[i]` where given and not empty) of
    -log(the weight on the tokens) (a token named twice counts twice), or of -sum(share x log weight)."""
    n, _, m = log_w.shape
    counts = np.zeros((n, m), dtype=np.float32)  # how often each target names each token
    shares = np.zeros((n, m), dtype=np.float32)
    has_shares = np.zeros(n, dtype=bool)
    for i, (tokens, *share) in enumerate(targets):
        if share:
            np.add.at(shares[i], tokens, share[0])
            has_shares[i] = True
            counts[i] = 1.0  # unused (the where below); keeps that row's logsumexp and its gradient finite
        else:
            np.add.at(counts[i], tokens, 1.0)
    counts, shares, has_shares = (torch.from_numpy(a).to(log_w.device) for a in (counts, shares, has_shares))
    hit = torch.logsumexp(log_w + counts.log()[:, None], -1)  # (n, H): log of the weight on the tokens
    # share x log weight only where a share is given (0 x -inf, an unseen token, would be nan)
    xent = torch.where(shares[:, None] > 0, shares[:, None] * log_w, 0.0).sum(-1)  # (n, H)
    per_head = torch.where(has_shares[:, None], xent, hit)  # (n, H)
    if not heads or not any(heads):
        return -per_head.mean(-1).sum()
    mask = np.ones((n, log_w.shape[1]), dtype=np.float32)
    for i, hs in enumerate(heads):
        if hs:
            mask[i] = 0.0
            mask[i, list(hs)] = 1.0
    mask = torch.from_numpy(mask).to(log_w.device)
    return -((per_head * mask).sum(-1) / mask.sum(-1)).sum()
