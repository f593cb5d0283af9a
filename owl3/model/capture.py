"""Reading what a decoder's projections computed in one forward, from outside: forward hooks, for a while.

`Projections` registers forward hooks on chosen layers' linear projections (q_proj, k_proj, v_kv_proj,
the hyper layers' gate_proj) for the length of one forward and removes them afterwards; it rebuilds the
rotated queries and keys from the captured outputs with the decoder's own RoPE. The model is not told and
not changed: no module's forward holds a tap, and a model that is not being captured runs exactly as
before. Only the capturing thread's forward is recorded (a server's engine thread may be running the same
modules meanwhile). Training (attention targets, owl3/training/attention.py) and inference (the
attention share of an answer, owl3/inference/attribution.py) both read attention this way.
"""

from __future__ import annotations

import threading
from collections.abc import Iterator
from contextlib import contextmanager

import torch
from torch import Tensor, nn

from owl3.model.hyper import split_visual_kv
from owl3.model.layers import apply_rope, repeat_kv

PROJECTIONS = ("q_proj", "k_proj", "v_kv_proj", "gate_proj")


class Projections:
    """The outputs of chosen layers' projections during one forward of a Qwen2 decoder (`capture`).

    `wanted`: decoder layer index -> names among PROJECTIONS. After the forward, `queries(i)` and
    `keys(i)` are layer i's rotated self-attention queries (B, H, T, d) and keys (B, kv, T, d),
    `visual_keys(i, visual)` its rotated visual keys (B, kv, M, d), and `gates(i)` a hyper layer's gate
    (B, H, T, d) after its sigmoid, exactly as the layer computed them.
    """

    def __init__(self, decoder: nn.Module, wanted: dict[int, set[str]]) -> None:
        self.decoder = decoder
        self.wanted = wanted
        self.outputs: dict[tuple[int, str], list[Tensor]] = {}
        self.cos_sin: tuple[Tensor, Tensor] | None = None

    @contextmanager
    def capture(self, positions: Tensor, dtype: torch.dtype) -> Iterator[Projections]:
        """Hooks on for one forward over `positions` (B, T) whose embeddings have `dtype`."""
        self.outputs = {}
        # the decoder's own cos/sin: it computes them once per forward in the embeddings' dtype
        self.cos_sin = self.decoder.rope(positions, dtype) if self.wanted else None
        handles = []
        try:
            for i, names in self.wanted.items():
                attn = self.decoder.layers[i].self_attn
                for name in names:
                    handles.append(getattr(attn, name).register_forward_hook(self._keeper((i, name))))
            yield self
        finally:
            for h in handles:
                h.remove()

    def _keeper(self, key: tuple[int, str]):
        owner = threading.get_ident()

        def hook(module: nn.Module, args: tuple, out: Tensor) -> None:
            # only the capturing thread's forward: a server's engine thread may run the same modules
            if threading.get_ident() != owner:
                return
            # v_kv_proj runs in chunks of visual tokens for very long inputs: kept in order, joined later
            self.outputs.setdefault(key, []).append(out)

        return hook

    def _output(self, layer: int, name: str) -> Tensor:
        outs = self.outputs.get((layer, name))
        if not outs:
            raise RuntimeError(f"layer {layer}'s {name} did not run in the captured forward")
        return outs[0] if len(outs) == 1 else torch.cat(outs, dim=1)

    def _rotated(self, layer: int, name: str, n_heads: int) -> Tensor:
        x = self._output(layer, name)  # (B, T, heads * d)
        b, t, _ = x.shape
        x = x.view(b, t, n_heads, -1).transpose(1, 2)  # (B, heads, T, d)
        cos, sin = self.cos_sin
        return apply_rope(x, cos, sin)

    def queries(self, layer: int) -> Tensor:
        return self._rotated(layer, "q_proj", self.decoder.layers[layer].self_attn.n_heads)

    def keys(self, layer: int) -> Tensor:
        return self._rotated(layer, "k_proj", self.decoder.layers[layer].self_attn.n_kv_heads)

    def visual_keys(self, layer: int, positions: Tensor) -> Tensor:
        """Rotated visual keys of hyper layer `layer`; positions (B, M): the visual context's MI-RoPE ones."""
        attn = self.decoder.layers[layer].self_attn
        k, _ = split_visual_kv(
            self._output(layer, "v_kv_proj"), positions, self.decoder.rope, attn.n_kv_heads, attn.head_dim
        )
        return k

    def gates(self, layer: int) -> Tensor:
        """A hyper layer's adaptive gate (B, H, T, d), sigmoid applied (gate_proj runs once per forward)."""
        return self._output(layer, "gate_proj")


def cross_scores(q: Tensor, k: Tensor, key_starts: Tensor, positions: Tensor, offset: int = 1) -> Tensor:
    """The attention logits of text queries over visual keys, -inf where a query may not see the token.

    q (B, H, L, d) rotated; k (B, kv, M, d); key_starts (B, M); positions (B, L) -> (B, H, L, M). What the
    cross branch (owl3.model.hyper.cross_attention) softmaxes, written out for the few queries asked about
    (it is not how the model runs: that never builds the whole (L, M) matrix). A query at p sees the token
    iff s_k + offset <= p (`Owl3Config.mi_rope_offset`: 1 for 240728, 0 for 241101, whose fused softmax
    restricted to the visual keys is this same distribution)."""
    kk = repeat_kv(k, q.shape[1] // k.shape[1])  # (B, H, M, d)
    s = q @ kk.transpose(-1, -2) / q.shape[-1] ** 0.5
    visible = key_starts[:, None, None, :] + offset <= positions[:, None, :, None]
    return s.masked_fill(~visible, float("-inf"))
