"""The engine's visual side: pictures through the vision tower and into each request's hyper-layer K/V.

`encode_pieces` takes the next views of several requests at once: those whose K/V (before MI-RoPE) the
media cache holds skip the tower; the others go through it together, one batch; each request's buffers
are filled in place and a request whose last view is in gets its `VisualContext`. `features_context`
makes a padded batch of projected features (their K/V follow lazily), for a forward outside the step
loop and for models without per-view K/V. The engine owns the scheduling; this owns no state.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import Tensor

from owl3.inference.media_cache import MediaCache
from owl3.inference.request import Request
from owl3.model import Owl3Model, VisualContext
from owl3.processing import Encoding


def features_context(
    model: torch.nn.Module, encodings: Sequence[Encoding], chunk: int, split_prefill: bool | None
) -> VisualContext:
    """The batch's projected visual features, padded per row; each hyper layer's K/V follow lazily."""
    pixels = [e.pixel_values for e in encodings if e.pixel_values is not None]
    feats = model.encode_media(torch.cat(pixels), chunk)  # (N, T, D)
    per_sample: list[Tensor | None] = []
    start = 0
    for e in encodings:
        n = 0 if e.pixel_values is None else e.pixel_values.shape[0]
        per_sample.append(feats[start : start + n] if n else None)
        start += n
    starts = [e.media_starts for e in encodings]
    offset = getattr(model.cfg, "mi_rope_offset", 1)
    ctx = VisualContext.build(per_sample, starts, offset)
    ctx.split_prefill = split_prefill
    return ctx


def encode_pieces(
    model: Owl3Model, cache: MediaCache, pieces: list[tuple[Request, int]], split_prefill: bool | None
) -> None:
    """The next `n` views of each (request, n): their K/V from the media cache, the others through the
    tower together (one batch), then into each request's hyper-layer K/V buffers; a request whose last
    view is in gets its `visual`."""
    raws: list[list[Tensor | None]] = []  # per piece, each view's (n_hyper, 2, kv, T, d)
    keys: list[list[bytes]] = []
    todo: list[tuple[int, int]] = []  # (piece, view in piece) that the tower must see
    for i, (req, n) in enumerate(pieces):
        a = req.views_done
        if not cache.enabled:
            keys.append([])
            raws.append([None] * n)
        else:
            keys.append(
                req.view_keys[a : a + n] if req.view_keys else cache.keys(req.enc.pixel_values[a : a + n])
            )
            raws.append([cache.get(k) for k in keys[-1]])
        todo += [(i, j) for j, r in enumerate(raws[-1]) if r is None]
    if todo:
        pixels = torch.stack([pieces[i][0].enc.pixel_values[pieces[i][0].views_done + j] for i, j in todo])
        new = model.project_visual_kv(model.encode_media(pixels, None))
        for (i, j), raw in zip(todo, new, strict=True):
            raws[i][j] = raw
            if cache.enabled:
                cache.put(keys[i][j], raw)
    for (req, n), raw in zip(pieces, raws, strict=True):
        if req.kv is None:
            req.kv = model.visual_kv_buffers(req.n_views)
        positions = model.visual_layout(req.enc.media_starts)[1]
        model.write_visual_kv(req.kv, torch.stack(raw), positions[None], req.views_done)
        req.views_done += n
        if req.views_done == req.n_views:
            req.visual = model.visual_context_from_kv(req.kv, req.enc.media_starts)
            req.visual.split_prefill = split_prefill
            req.kv = None
