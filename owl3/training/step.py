"""The training forward: a batch in, the summed cross-entropy of its answer tokens out.

`TrainStep` wraps an `Owl3Model` so that DDP / FSDP2 see one module whose forward does everything: the
frozen vision tower (under no_grad: no activations kept), the projector, the LLM with Hyper Attention,
and the loss on the answer positions only (the lm_head runs on those rows alone, so a 150k vocabulary
never costs a (B, T, V) logits tensor). It returns the *sum*; the loop divides by the global number of
answer tokens of the optimizer step, which makes the loss the same however the batch is split across
micro-batches and processes.

With `always_visual`, a batch without images still runs one blank image through the vision tower and
projector, with no text position allowed to see it (key start NEVER): the logits are exactly those of a
text-only forward (the gate keeps A_self where nothing is seen), but every trainable parameter is in the
graph, which DDP and FSDP need when ranks differ in whether they hold images.

With `attention_weight` > 0, rows with attention targets (`Sample.attend`) add, per target, `attention_weight`
x the mean over heads of -log(the share of one hyper layer's cross-attention, `attention_layer` among the
hyper layers, that the target's query gives the target's visual tokens): weight 1 counts a target as much
as one answer token. A target with shares (a box with odds, training/data.py `Attend.odds`) adds instead
the cross-entropy of that look against them. Text targets (`Sample.attend_text`) add the same as the
first kind of decoder layer `text_layer`'s self-attention on the target's text tokens (`attend_layer`:
of the layer each names). The queries and keys come from forward hooks (owl3/training/attention.py), not
from the model. The attention part of the last forward is kept in `attention_sum`/`attention_count`.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from owl3.errors import Owl3Error
from owl3.model import Owl3Model, VisualContext
from owl3.model.hyper import NEVER
from owl3.training.attention import Readout, attention_loss, text_attention_loss
from owl3.training.encode import IGNORE, VisualTarget


class TrainStep(nn.Module):
    def __init__(
        self,
        model: Owl3Model,
        always_visual: bool = False,
        vision_chunk: int = 64,
        train_vision: bool = False,
        attention_weight: float = 0.0,
        attention_layer: int = -1,
        text_layer: int | None = None,
    ) -> None:
        super().__init__()
        self.model = model
        self.train_vision = train_vision
        self.attention_weight, self.attention_layer = attention_weight, attention_layer
        # default: the decoder layer right before the supervised hyper layer (it can bring the text that
        # took in an image to the query that hyper layer then reads with)
        hyper = [i for i, layer in enumerate(model.language_model.model.layers) if layer.self_attn.is_hyper]
        self.hyper_layers = hyper
        n_layers = len(model.language_model.model.layers)
        if hyper and not -len(hyper) <= attention_layer < len(hyper):
            raise Owl3Error(f"attention_layer {attention_layer}: the model has {len(hyper)} hyper layers")
        if text_layer is None:
            text_layer = max(hyper[attention_layer] - 1, 0) if hyper else 0
        if not 0 <= text_layer < n_layers:
            raise Owl3Error(
                f"text_attention_layer {text_layer}: the model has decoder layers 0..{n_layers - 1}"
            )
        self.text_layer = text_layer
        self.attention_sum, self.attention_count = 0.0, 0
        self.always_visual = always_visual
        self.vision_chunk = vision_chunk

    def forward(
        self,
        input_ids: Tensor,
        labels: Tensor,
        pixel_values: Tensor | None,
        n_media: list[int],
        media_starts: list[list[int]],
        attend: list[list[VisualTarget]] | None = None,
        attend_text: list[list[tuple[int, list[int]]]] | None = None,
        attend_layer: list[list[tuple[int | None, int, list[int], tuple[int, ...]]]] | None = None,
    ) -> Tensor:
        """input_ids, labels (B, T), right-padded; pixel_values (N, 3, S, S) -> summed loss (scalar)."""
        m = self.model
        b, t = input_ids.shape
        visual = self.visual(pixel_values, n_media, media_starts, b, input_ids.device)
        on = self.attention_weight > 0
        supervise = on and visual is not None and attend is not None and any(attend)
        by_layer = self.text_targets(attend_text, attend_layer, b) if on else {}
        wanted: dict[int, set[str]] = {layer: {"rotate"} for layer in by_layer}
        if supervise:
            layer = self.hyper_layers[self.attention_layer]
            wanted.setdefault(layer, set()).update(("rotate", "rotate_visual"))
        decoder = m.language_model.model
        taps = Readout(decoder, wanted)
        positions = torch.arange(t, device=input_ids.device).expand(b, t)
        with taps.capture():
            h = decoder(m.embed(input_ids), positions, None, None, visual)  # (B, T, D)
        target = labels[:, 1:]  # token t+1 is predicted at t
        keep = target != IGNORE  # (B, T-1)
        logits = m.language_model.lm_head(h[:, :-1][keep]).float()  # (n_targets, V)
        loss = F.cross_entropy(logits, target[keep], reduction="sum")
        self.attention_sum, self.attention_count = 0.0, 0
        if supervise:
            layer = self.hyper_layers[self.attention_layer]
            q, k = taps.queries(layer), taps.visual_keys(layer)
            att = attention_loss(q, k, visual.key_starts, attend, m.cfg.mi_rope_offset)
            self.attention_sum, self.attention_count = float(att.detach()), sum(len(a) for a in attend)
            loss = loss + self.attention_weight * att
        for layer, targets in by_layer.items():
            att = text_attention_loss(taps.queries(layer), taps.keys(layer), targets)
            self.attention_sum += float(att.detach())
            self.attention_count += sum(len(a) for a in targets)
            loss = loss + self.attention_weight * att
        return loss

    def text_targets(
        self,
        attend_text: list[list[tuple[int, list[int]]]] | None,
        attend_layer: list[list[tuple[int | None, int, list[int], tuple[int, ...]]]] | None,
        b: int,
    ) -> dict[int, list[list[tuple]]]:
        """The text targets by decoder layer, each as per row (query position, tokens[, heads]);
        `attend_text`'s and those of layer None in `text_layer`. Only layers with a target."""
        out: dict[int, list[list[tuple]]] = {}
        for row, targets in enumerate(attend_text or []):
            for target in targets:
                out.setdefault(self.text_layer, [[] for _ in range(b)])[row].append(target)
        n_layers = len(self.model.language_model.model.layers)
        n_heads = self.model.language_model.model.layers[0].self_attn.n_heads
        for row, targets in enumerate(attend_layer or []):
            for layer, pos, tokens, heads in targets:
                layer = self.text_layer if layer is None else layer
                if not 0 <= layer < n_layers:
                    raise Owl3Error(f"a text target names layer {layer}; the model has 0..{n_layers - 1}")
                if any(h >= n_heads for h in heads):
                    has = f"0..{n_heads - 1}"
                    raise Owl3Error(f"a text target names heads {list(heads)}; the model has {has}")
                target = (pos, tokens, heads) if heads else (pos, tokens)
                out.setdefault(layer, [[] for _ in range(b)])[row].append(target)
        return out

    def visual(
        self,
        pixel_values: Tensor | None,
        n_media: list[int],
        media_starts: list[list[int]],
        b: int,
        device: torch.device,
    ) -> VisualContext | None:
        m = self.model
        blank = pixel_values is None
        if blank:
            if not self.always_visual:
                return None
            s = m.cfg.vision.image_size
            pixel_values = torch.zeros(1, 3, s, s, device=device)
        with torch.set_grad_enabled(self.train_vision and torch.is_grad_enabled()):  # frozen unless trained
            feats = torch.cat([m.vision_model(c) for c in pixel_values.split(self.vision_chunk)])
        feats = m.vision2text_model(feats)  # (N, T_img, D)
        if blank:
            n = feats.shape[1]
            ctx = VisualContext(
                features=feats.expand(b, n, feats.shape[2]),
                key_starts=torch.full((b, n), NEVER, dtype=torch.long, device=feats.device),
                positions=torch.zeros((b, n), dtype=torch.long, device=feats.device),
            )
        else:
            per_sample: list[Tensor | None] = []
            start = 0
            for k in n_media:
                per_sample.append(feats[start : start + k] if k else None)
                start += k
            ctx = m.visual_context(per_sample, media_starts)
        ctx.recompute = True  # no K/V caching across calls: gradient checkpointing recomputes layers
        return ctx
