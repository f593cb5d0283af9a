"""A LLaVA-Interleave-style baseline built from an mPLUG-Owl3 model's own parts (benchmarks only).

Concatenation is what Hyper Attention replaces: the projected visual tokens are put into the LLM's
sequence, where every one of them goes through every decoder layer and stays in the KV cache. This module
reuses the Owl3Model's vision tower, projector and LLM (same weights, same kernels, same KV cache and
engine), so a side-by-side benchmark measures the architecture and nothing else. The hyper layers run as
plain Qwen2 layers here (their cross branch is never called). It is not a trained model: its outputs are
for timing and memory, not for answers.

Input convention (LLaVA's): each image is `tokens_per_image` copies of the image token id in input_ids
(`expand_image_tokens`); at prefill the embeddings of those slots are replaced, in order, by the visual
features of the sample.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

from owl3.model.hyper import NEVER, VisualContext
from owl3.model.owl3 import Owl3Model
from owl3.model.text import Cache


class ConcatModel(nn.Module):
    def __init__(self, base: Owl3Model, image_token_id: int) -> None:
        super().__init__()
        self.base = base
        self.cfg = base.cfg
        self.image_token_id = image_token_id

    @property
    def device(self) -> torch.device:
        return self.base.device

    @property
    def dtype(self) -> torch.dtype:
        return self.base.dtype

    def encode_media(self, pixels: Tensor, chunk_size: int | None = 64) -> Tensor:
        return self.base.encode_media(pixels, chunk_size)

    def forward(
        self,
        input_ids: Tensor,
        positions: Tensor | None = None,
        mask: Tensor | None = None,
        cache: Cache | None = None,
        visual: VisualContext | None = None,
        last_only: bool = False,
    ) -> Tensor:
        """As Owl3Model.forward, but the visual features replace the image-token embeddings (prefill)."""
        if positions is None:
            positions = torch.arange(input_ids.shape[1], device=input_ids.device).expand_as(input_ids)
        x = self.base.embed(input_ids)  # (B, T, D)
        if visual is not None and not visual.after_prompt:
            x = x.clone()
            for b in range(x.shape[0]):
                slots = input_ids[b] == self.image_token_id  # (T,)
                n = int((visual.key_starts[b] < NEVER).sum())
                if int(slots.sum()) != n:
                    raise ValueError(f"row {b}: {int(slots.sum())} image slots but {n} visual tokens")
                x[b, slots] = visual.features[b, :n].to(x.dtype)
        lm = self.base.language_model
        h = lm.model(x, positions, mask, cache, None)  # no cross branch: plain Qwen2 layers
        if last_only:
            h = h[:, -1:]
        return lm.lm_head(h)


def expand_image_tokens(
    input_ids: Tensor, media_starts: list[int], tokens_per_image: int
) -> tuple[Tensor, list[int]]:
    """(L,) ids with one token per image -> ids with `tokens_per_image` slots per image, and new starts."""
    ids = input_ids.tolist()
    starts = set(media_starts)
    out: list[int] = []
    new_starts: list[int] = []
    for i, t in enumerate(ids):
        if i in starts:
            new_starts.append(len(out))
            out.extend([t] * tokens_per_image)
        else:
            out.append(t)
    return torch.tensor(out, dtype=input_ids.dtype), new_starts
