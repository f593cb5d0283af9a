"""The attention share of an answer: how much of its hyper-attention fell on each image or video frame;
and the gradient share: how much the answer depends on each.

After an answer is generated, one teacher-forced forward runs over prompt + answer with forward hooks on
the hyper layers' attention (owl3/model/capture.py: the model's forward holds no tap, and nothing runs
when no attribution is asked for). From the captured queries and gates and the visual keys that the
engine computed for the request, the cross-attention probabilities of the queries that produced the
answer's tokens are rebuilt exactly as the model computed them (rotated queries, MI-RoPE keys, the
s_k < p mask).

Share rules, one per attention variant (`SHARE_RULES`, keyed by `Owl3Config.attention`):
- "gated" (240728 family): a query's cross-attention probability on each visual token times the mean of
  its head's gate (the fraction of that head's output the cross branch gets), summed over the answer's
  queries, the heads and the hyper layers.
- "fused" (241101 family): the image keys' part of the one softmax over [image keys (s_k <= p); text
  keys (causal)] of each query, summed over the answer's queries, the heads and the hyper layers (a
  query that sees no image keeps plain self-attention and puts no mass on any image).

The gradient share (`attribution="gradient"`, `gradient_mass`) asks instead how much the answer depends on
each image. Images reach the language model only as the hyper layers' visual keys and values, so one
teacher-forced forward and backward gives, per hyper layer and view, gradient x input on those keys and on
those values: a first-order estimate of how much the answer's log-probability changes when the view's keys
(values) are taken away. Its magnitude |<dL/dK, K>| + |<dL/dV, V>| is summed as the attention mass is. It
follows what the answer used, not where a head looked: heads that look at an image by position and do not
change the answer weigh little (docs/rag.md measures both on the demo model). It is variant-independent.

The per-view masses are summed over the views of one image (crops and global view) and normalized over
the images and frames of the request, so the shares add up to 1; `Share.by_layer` holds the same share
within each hyper layer alone (layers can read the images very differently: docs/rag.md).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field, replace

import torch
from torch import Tensor

from owl3.errors import Owl3Error
from owl3.model import Owl3Model, VisualContext
from owl3.model.capture import Readout, cross_scores
from owl3.model.layers import repeat_kv
from owl3.processing import Encoding


@dataclass(frozen=True)
class Share:
    """One image's (or video frame's) part of an answer's hyper-attention (attention share) or of what
    the answer depends on (gradient share)."""

    kind: str  # "image" or "video"
    index: int  # the image's (or the video's) 0-based place among the request's images (videos)
    frame: int | None  # the frame of the video; None for an image
    share: float  # in [0, 1]; the shares of a request add up to 1
    # the share within each hyper layer alone (decoder layer index -> share; each layer's add up to 1)
    by_layer: dict[int, float] = field(default_factory=dict)

    @property
    def label(self) -> str:
        if self.kind == "image":
            return f"image {self.index + 1}"
        return f"video {self.index + 1} frame {self.frame + 1}"

    def to_dict(self) -> dict:
        return {
            "label": self.label,
            "kind": self.kind,
            "index": self.index,
            "frame": self.frame,
            "share": self.share,
            "by_layer": dict(self.by_layer),
        }


MEASURES = ("attention", "gradient")


def attribution_measure(attribution: bool | str) -> str:
    """`attribution=True` -> "attention"; "attention" or "gradient" as they are; anything else refused."""
    if attribution is True:
        return "attention"
    if isinstance(attribution, str) and attribution in MEASURES:
        return attribution
    raise Owl3Error(f"attribution must be True, 'attention' or 'gradient', got {attribution!r}")


def hyper_layers(model: Owl3Model) -> list[int]:
    return [i for i, layer in enumerate(model.language_model.model.layers) if layer.self_attn.is_hyper]


def _gated_mass(taps: Readout, layer: int, ctx: VisualContext, queries: Tensor) -> Tensor:
    """(M,) probability mass times gate on each visual token, summed over heads and `queries` (n,)."""
    q = taps.queries(layer)[:, :, queries].float()  # (1, H, n, d)
    k = ctx.kv[layer][0].float()  # (1, kv, M, d) rotated as the layer used them
    p = cross_scores(q, k, ctx.key_starts, queries[None]).softmax(-1)  # (1, H, n, M)
    g = taps.gates(layer)[:, :, queries].float().mean(-1)  # (1, H, n): the cross branch's part per head
    return (p * g[..., None]).sum((0, 1, 2))


def fused_probs(q: Tensor, k_img: Tensor, key_starts: Tensor, k_txt: Tensor, queries: Tensor) -> Tensor:
    """The 241101 fused softmax written out: q (1, H, n, d) rotated queries at positions `queries` (n,);
    k_img (1, kv, M, d) the MI-RoPE visual keys, image k visible iff s_k <= p; k_txt (1, kv, T, d) the
    rotated text keys, causal -> (1, H, n, M + T) probabilities over [visual; text] keys."""
    s_img = cross_scores(q, k_img, key_starts, queries[None], offset=0)  # (1, H, n, M)
    k = repeat_kv(k_txt, q.shape[1] // k_txt.shape[1])  # (1, H, T, d)
    s_txt = q @ k.transpose(-1, -2) / q.shape[-1] ** 0.5  # (1, H, n, T)
    causal = torch.arange(k.shape[2], device=q.device)[None, :] <= queries[:, None]  # (n, T)
    return torch.cat([s_img, s_txt.masked_fill(~causal, float("-inf"))], -1).softmax(-1)


def _fused_mass(taps: Readout, layer: int, ctx: VisualContext, queries: Tensor) -> Tensor:
    """(M,) the visual keys' part of each query's one softmax, summed over heads and `queries` (n,)."""
    q = taps.queries(layer)[:, :, queries].float()  # (1, H, n, d)
    k_img = ctx.kv[layer][0].float()  # (1, kv, M, d)
    p = fused_probs(q, k_img, ctx.key_starts, taps.keys(layer).float(), queries)
    return p[..., : k_img.shape[2]].sum((0, 1, 2))


SHARE_RULES: dict[str, tuple[set[str], Callable[[Readout, int, VisualContext, Tensor], Tensor]]] = {
    "gated": ({"rotate", "gate_proj"}, _gated_mass),
    "fused": ({"rotate"}, _fused_mass),
}


@torch.inference_mode()
def view_mass(
    model: Owl3Model, ctx: VisualContext, enc: Encoding, answer_ids: Sequence[int]
) -> dict[int, Tensor]:
    """{hyper layer index: (n_views,) float32}: the un-normalized attention mass of the answer on each view
    of `enc`, per hyper layer.

    `ctx` is the request's visual context with every hyper layer's K/V (`Engine.encode_visual([enc])`);
    `answer_ids` the answer's tokens without its stop token. The queries are the positions that produced
    them: the prompt's last token and the answer's tokens but the last."""
    variant = model.cfg.attention
    if variant not in SHARE_RULES:
        raise Owl3Error(
            f"attention shares are not available for the {variant!r} attention variant yet; "
            "ask without attribution"
        )
    names, rule = SHARE_RULES[variant]
    n_views = len(enc.media_starts)
    layers = hyper_layers(model)
    if not answer_ids or not n_views:
        return {i: torch.zeros(n_views) for i in layers}
    ids, positions, queries = _teacher_forced(model, enc, answer_ids)
    taps = Readout(model.language_model.model, {i: set(names) for i in layers})
    with taps.capture():
        model(ids, positions, visual=ctx, last_only=True)
    return {i: rule(taps, i, ctx, queries).view(n_views, -1).sum(-1).cpu() for i in layers}  # (M,) each


def _teacher_forced(
    model: Owl3Model, enc: Encoding, answer_ids: Sequence[int]
) -> tuple[Tensor, Tensor, Tensor]:
    """ids (1, T) of prompt + answer but its last token, their positions (1, T), and the positions (n,)
    of the queries that produced the answer's n tokens (the prompt's last token and the answer's)."""
    dev = model.device
    ids = torch.cat([enc.input_ids, torch.tensor(list(answer_ids[:-1]), dtype=torch.long)]).to(dev)[None]
    positions = torch.arange(ids.shape[1], device=dev)[None]
    return ids, positions, torch.arange(enc.input_ids.shape[0] - 1, ids.shape[1], device=dev)


def gradient_mass(
    model: Owl3Model, ctx: VisualContext, enc: Encoding, answer_ids: Sequence[int]
) -> dict[int, Tensor]:
    """{hyper layer index: (n_views,) float32}: |<dL/dK, K>| + |<dL/dV, V>| summed over each view's visual
    tokens and heads, where L is the answer's log-probability given the prompt (teacher-forced) and K, V
    the layer's visual keys (rotated) and values. Arguments as `view_mass`'s. The model's weights take no
    gradient and `ctx` is left as it was (the forward runs on copies of its K/V)."""
    n_views = len(enc.media_starts)
    layers = hyper_layers(model)
    if not answer_ids or not n_views:
        return {i: torch.zeros(n_views) for i in layers}
    dev = model.device
    ids, positions, queries = _teacher_forced(model, enc, answer_ids)
    with torch.inference_mode(False), torch.enable_grad():
        kv = {i: (k.clone().requires_grad_(), v.clone().requires_grad_()) for i, (k, v) in ctx.kv.items()}
        own = replace(ctx, kv=kv, decode_mask=None, split_plan=None)
        text = model.language_model
        h = text.model(model.embed(ids), positions, None, None, own)[0, queries]  # (n, D)
        logp = text.lm_head(h).float().log_softmax(-1)
        answer = torch.tensor(list(answer_ids), device=dev)
        loss = logp[torch.arange(len(answer_ids), device=dev), answer].sum()
        tensors = [t for i in layers for t in kv[i]]
        grads = [
            torch.zeros_like(t) if g is None else g  # a K/V the answer did not reach
            for g, t in zip(torch.autograd.grad(loss, tensors, allow_unused=True), tensors, strict=True)
        ]
    out = {}
    for j, i in enumerate(layers):
        per = [(g * t).float().sum((0, 1, 3)).view(n_views, -1).sum(-1).abs() for g, t in
               zip(grads[2 * j : 2 * j + 2], kv[i], strict=True)]  # fmt: skip
        out[i] = (per[0] + per[1]).detach().cpu()
    return out


def group_shares(enc: Encoding, mass: dict[int, Tensor]) -> list[Share]:
    """Per-layer per-view masses -> one `Share` per image (its crops and global view together) and per
    video frame, normalized to add up to 1 over the layers together and within each layer (all zero if
    the answer put no mass anywhere)."""
    n = len(enc.media_starts)
    owners = enc.view_owners or [("image", i, 0) for i in range(n)]
    owner_keys = [(kind, index, None if kind == "image" else sub) for kind, index, sub in owners]
    keys = list(dict.fromkeys(owner_keys))  # images and frames in view order
    slot = [keys.index(k) for k in owner_keys]
    per_layer = {}
    for layer, m in mass.items():
        totals = [0.0] * len(keys)
        for j, v in zip(slot, m.tolist(), strict=True):
            totals[j] += v
        per_layer[layer] = totals
    total = [sum(t[j] for t in per_layer.values()) for j in range(len(keys))]
    shares, by_layer = _normalized(total), {layer: _normalized(t) for layer, t in per_layer.items()}
    return [
        Share(kind, index, frame, shares[j], {layer: v[j] for layer, v in by_layer.items()})
        for j, (kind, index, frame) in enumerate(keys)
    ]


def _normalized(xs: list[float]) -> list[float]:
    z = sum(xs)
    return [x / z if z > 0 else 0.0 for x in xs]
