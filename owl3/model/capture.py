"""Reading what a decoder's attention computed in one forward, from outside: forward hooks, for a while.

`Readout` registers forward hooks on chosen submodules of chosen layers' attention for the length of one
forward and removes them afterwards: `rotate` (its output is the rotated queries and keys the attention
goes on with), a hyper layer's `rotate_visual` (its rotated visual keys), `gate_proj` (its adaptive
gate), or any projection (`v_proj`, ...). The tensors read are the very ones the layer used, so a loss on
them joins the gradient where the attention's own does (training the same weights, bit for bit, as
reading them from inside the forward would). The model is not told and not changed: no module's forward
holds a tap, and a model that is not being read runs exactly as before. Only the reading thread's forward
is recorded (a server's engine thread may be running the same modules meanwhile). Training (attention
targets, owl3/training/attention.py) and inference (the attention share of an answer,
owl3/inference/attribution.py) both read attention this way.
"""

from __future__ import annotations

import threading
from collections.abc import Iterator
from contextlib import contextmanager

import torch
from torch import Tensor, nn

from owl3.model.layers import repeat_kv


class Readout:
    """What chosen submodules of a Qwen2 decoder's attention layers output during one forward (`capture`).

    `wanted`: decoder layer index -> names of `self_attn` submodules ("rotate", "rotate_visual",
    "gate_proj", "q_proj", ...). After the forward, `queries(i)` and `keys(i)` are layer i's rotated
    self-attention queries (B, H, T, d) and keys (B, kv, T, d), `visual_keys(i)` its rotated visual keys
    (B, kv, M, d) when the forward computed them, and `gates(i)` a hyper layer's gate (B, H, T, d) after
    its sigmoid, exactly as the layer computed them.
    """

    def __init__(self, decoder: nn.Module, wanted: dict[int, set[str]]) -> None:
        self.decoder = decoder
        self.wanted = wanted
        self.outputs: dict[tuple[int, str], list] = {}

    @contextmanager
    def capture(self) -> Iterator[Readout]:
        """Hooks on for the forwards run inside (one, usually)."""
        self.outputs = {}
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

        def hook(module: nn.Module, args: tuple, out) -> None:
            # only the capturing thread's forward: a server's engine thread may run the same modules
            if threading.get_ident() != owner:
                return
            # the visual keys are rotated in chunks of tokens for very long inputs: kept in order
            self.outputs.setdefault(key, []).append(out)

        return hook

    def output(self, layer: int, name: str) -> list:
        """Every output of layer `layer`'s `name` in the captured forward, in order."""
        outs = self.outputs.get((layer, name))
        if not outs:
            raise RuntimeError(f"layer {layer}'s {name} did not run in the captured forward")
        return outs

    def queries(self, layer: int) -> Tensor:
        return self.output(layer, "rotate")[0][0]

    def keys(self, layer: int) -> Tensor:
        return self.output(layer, "rotate")[0][1]

    def visual_keys(self, layer: int) -> Tensor:
        """Rotated visual keys of hyper layer `layer` (B, kv, M, d), its chunks joined."""
        outs = [out[0] for out in self.output(layer, "rotate_visual")]
        return outs[0] if len(outs) == 1 else torch.cat(outs, dim=2)

    def gates(self, layer: int) -> Tensor:
        """A hyper layer's adaptive gate (B, H, T, d), sigmoid applied (gate_proj runs once per forward)."""
        return self.output(layer, "gate_proj")[0]


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
