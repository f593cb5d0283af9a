"""The generation engine: batched prefill, cached decode, events as a generator.

A batch of encoded requests is left-padded into one (B, L) prompt; each row keeps its own raw positions
(0..len-1), so RoPE, MI-RoPE and the `s_k < p` image mask are exactly those of the row run alone. The
visual features of all images of the batch are encoded in one chunked pass, and every hyper layer turns
them into keys/values once, at prefill; each decode step then costs one token through the LLM.
A request may start from a saved `PromptMemory` (owl3/inference/memory.py): its prefix's text KV and
visual K/V are copied in and only the rest of the prompt is prefilled.

The engine knows tensors and token ids only: templates and text are the processor's and the API's job.
"""

from __future__ import annotations

import weakref
from collections.abc import Iterator, Sequence
from contextlib import AbstractContextManager, nullcontext
from dataclasses import dataclass
from typing import Protocol

import torch
from torch import Tensor
from torch.nn.attention import SDPBackend, sdpa_kernel

from owl3.errors import Owl3Error
from owl3.inference.kv_cache import KVCache
from owl3.inference.sampling import SamplingParams, make_generator, sample
from owl3.model import Owl3Model, VisualContext
from owl3.model.layers import causal_mask
from owl3.processing import Encoding


@dataclass(frozen=True)
class TokenEvent:
    """One generated token of request `index`; `finish_reason` is "stop" or "length" on its last token."""

    index: int
    token_id: int
    finish_reason: str | None = None

    @property
    def finished(self) -> bool:
        return self.finish_reason is not None


_COMPILED: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()


# torch.compile backend of the decode step ("eager" checks graph capture without code generation)
COMPILE_BACKEND = "inductor"


def compiled(model: torch.nn.Module):
    """`torch.compile(model)` for the decode step, made once per model (its graphs survive engines).

    Sizes are symbolic (`dynamic=True`): one graph serves every step (the cache grows by one slot per
    step) and every request (tests/test_engine.py counts the graphs).
    """
    if model not in _COMPILED:
        _COMPILED[model] = torch.compile(model, dynamic=True, backend=COMPILE_BACKEND)
    return _COMPILED[model]


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


class PromptMemory(Protocol):
    """A prompt prefix already run through the model (owl3.inference.memory.VisualMemory)."""

    prefix_ids: Tensor  # (P,) the prefix's token ids

    @property
    def text_kv(self) -> list[tuple[Tensor, Tensor]]: ...  # per layer (1, kv, P, d) keys, values

    def visual_context(self) -> VisualContext: ...


@dataclass
class Prefill:
    """A padded batch ready for the model."""

    input_ids: Tensor  # (B, L) left-padded
    positions: Tensor  # (B, L) raw positions per row (padding: 0)
    key_valid: Tensor  # (B, max_len) bool: slot holds a real token
    visual: VisualContext | None
    lengths: list[int]


class Engine:
    def __init__(
        self,
        model: Owl3Model,
        stop_token_ids: Sequence[int],
        pad_token_id: int,
        vision_chunk_size: int = 64,
        max_positions: int | None = None,
        compile_decode: bool = False,
        split_prefill: bool | None = None,
    ) -> None:
        self.model = model
        self.stop_token_ids = tuple(stop_token_ids)
        self.pad_token_id = pad_token_id
        self.vision_chunk_size = vision_chunk_size
        # prompt + answer never exceed this many tokens (default: the model's max_position_embeddings)
        self.max_positions = max_positions or model.cfg.text.max_position_embeddings
        # the decode step (one token per row) may run through torch.compile; prefill never does
        self._decode_model = compiled(model) if compile_decode else model
        # the prefill's split cross-attention (VisualContext.split_prefill): None = on CUDA only
        self.split_prefill = split_prefill

    def encode_visual(self, encodings: Sequence[Encoding]) -> VisualContext | None:
        """Encode every image of the batch in one chunked pass; None if the batch has no image."""
        if all(e.pixel_values is None for e in encodings):
            return None
        if len(encodings) == 1 and isinstance(self.model, Owl3Model):
            # one request (a long video, hundreds of images): straight to the hyper layers' K/V, chunk by
            # chunk, without holding the projected features of every image
            e = encodings[0]
            kv = self.model.encode_visual_kv(e.pixel_values, e.media_starts, self.vision_chunk_size)
            ctx = VisualContext.from_kv(kv, e.media_starts, self.model.cfg.vision.n_tokens)
        else:
            ctx = self.encode_features(encodings)
        ctx.split_prefill = self.split_prefill
        return ctx

    def encode_features(self, encodings: Sequence[Encoding]) -> VisualContext:
        """The batch's projected visual features, padded per row; each hyper layer's K/V follow lazily."""
        pixels = [e.pixel_values for e in encodings if e.pixel_values is not None]
        feats = self.model.encode_media(torch.cat(pixels), self.vision_chunk_size)  # (N, T, D)
        per_sample: list[Tensor | None] = []
        start = 0
        for e in encodings:
            n = 0 if e.pixel_values is None else e.pixel_values.shape[0]
            per_sample.append(feats[start : start + n] if n else None)
            start += n
        ctx = VisualContext.build(per_sample, [e.media_starts for e in encodings])
        ctx.split_prefill = self.split_prefill
        return ctx

    def check_length(self, n: int, index: int = 0, reserve: int = 1) -> None:
        """Refuse a prompt that leaves fewer than `reserve` positions for the answer."""
        if n + reserve > self.max_positions:
            raise Owl3Error(
                f"prompt {index} is {n} tokens long, but the model handles at most "
                f"{self.max_positions - reserve} prompt tokens (max_position_embeddings); "
                "shorten the text or use fewer images/frames"
            )

    def prepare(self, encodings: Sequence[Encoding], max_new_tokens: int) -> Prefill:
        if not encodings:
            raise Owl3Error("nothing to generate: the batch is empty")
        lengths = [int(e.input_ids.shape[0]) for e in encodings]
        for i, n in enumerate(lengths):
            self.check_length(n, i)
        dev = self.model.device
        b, width = len(encodings), max(lengths)
        max_len = width + max_new_tokens
        ids = torch.full((b, width), self.pad_token_id, dtype=torch.long)
        positions = torch.zeros((b, width), dtype=torch.long)
        key_valid = torch.zeros((b, max_len), dtype=torch.bool)
        for i, (e, n) in enumerate(zip(encodings, lengths, strict=True)):
            ids[i, width - n :] = e.input_ids
            positions[i, width - n :] = torch.arange(n)
            key_valid[i, width - n : width] = True
        return Prefill(
            ids.to(dev), positions.to(dev), key_valid.to(dev), self.encode_visual(encodings), lengths
        )

    @torch.inference_mode()
    def generate(
        self, encodings: Sequence[Encoding], params: SamplingParams, memory: PromptMemory | None = None
    ) -> Iterator[TokenEvent]:
        """Yield a TokenEvent per generated token of each request, until all have finished.

        With `memory` (one request whose prompt starts with the memory's prefix), the prefix's text KV and
        visual K/V are taken from the memory and only the rest of the prompt is prefilled.
        """
        params.validate()
        if memory is None:
            batch = self.prepare(encodings, params.max_new_tokens)
            cache, logits = self._prefill(batch)
        else:
            batch, cache, logits = self._prefill_from_memory(encodings, memory, params.max_new_tokens)
        if batch.visual is not None:
            batch.visual.start_decoding()  # from here on every query lies after all of its images
        model, b = self.model, len(encodings)

        stop = set(self.stop_token_ids) | set(params.stop_token_ids)
        seen = None
        if params.repetition_penalty != 1.0:
            seen = torch.zeros_like(logits, dtype=torch.bool)
            for i, e in enumerate(encodings):
                seen[i, e.input_ids.to(seen.device)] = True
        # one generator per request, so a request samples the same tokens alone or in a batch
        gens = [make_generator(params.seed, model.device) for _ in range(b)]
        pos = torch.tensor(batch.lengths, device=model.device)  # next raw position per row
        # rows are left-padded to the longest prompt: the host knows, no device reduction needed
        padded = min(batch.lengths) < cache.length
        active = [True] * b
        for step in range(params.max_new_tokens):
            next_ids = self._pick(logits, params, seen, gens)  # (B,)
            for i, tok in enumerate(next_ids.tolist()):
                if not active[i]:
                    continue
                reason = None
                if tok in stop:
                    reason = "stop"
                elif step + 1 == params.max_new_tokens or batch.lengths[i] + step + 1 >= self.max_positions:
                    reason = "length"
                active[i] = reason is None
                yield TokenEvent(i, tok, reason)
            if not any(active):
                return
            if seen is not None:
                seen[torch.arange(b), next_ids] = True
            slot = cache.length
            batch.key_valid[:, slot] = True
            # (B, 1, 1, S); none when no row is padded: every cached slot is then a real token
            mask = batch.key_valid[:, None, None, : slot + 1] if padded else None
            with attention_kernels(model.device):
                logits = self._decode_model(
                    next_ids[:, None], pos[:, None], mask, cache, batch.visual, last_only=True
                )[:, -1]
            cache.advance(1)
            pos += 1

    def _prefill(self, batch: Prefill) -> tuple[KVCache, Tensor]:
        model = self.model
        b, width = batch.input_ids.shape
        cache = KVCache(model.cfg.text, b, batch.key_valid.shape[1], model.dtype, model.device)
        # no padding: plain causal attention (fused kernels skip the masked half; no (L, L) mask is built)
        mask = None if min(batch.lengths) == width else causal_mask(batch.key_valid[:, :width], width)
        with attention_kernels(model.device):
            logits = model(batch.input_ids, batch.positions, mask, cache, batch.visual, last_only=True)[:, -1]
        cache.advance(width)
        return cache, logits

    def _prefill_from_memory(
        self, encodings: Sequence[Encoding], memory: PromptMemory, max_new_tokens: int
    ) -> tuple[Prefill, KVCache, Tensor]:
        if len(encodings) != 1:
            raise Owl3Error("a saved memory answers one request at a time; pass a single conversation")
        enc = encodings[0]
        model, dev = self.model, self.model.device
        n, p = int(enc.input_ids.shape[0]), int(memory.prefix_ids.shape[0])
        if n <= p or not torch.equal(enc.input_ids[:p].cpu(), memory.prefix_ids.cpu()):
            raise Owl3Error(
                "the prompt does not continue the memory's prompt; ask through the memory's own API "
                '(owl3 generate --memory FILE "question") so the prompt starts the same way'
            )
        self.check_length(n)
        cache = KVCache(model.cfg.text, 1, n + max_new_tokens, model.dtype, dev)
        cache.load_prefix(memory.text_kv)
        key_valid = torch.zeros((1, n + max_new_tokens), dtype=torch.bool, device=dev)
        key_valid[:, :n] = True
        visual = memory.visual_context()
        visual.split_prefill = self.split_prefill
        ids = enc.input_ids[p:].to(dev)[None]  # (1, n - p): only the new part of the prompt runs
        positions = torch.arange(p, n, device=dev)[None]
        mask = causal_mask(key_valid[:, :n], n - p)
        with attention_kernels(dev):
            logits = model(ids, positions, mask, cache, visual, last_only=True)[:, -1]
        cache.advance(n - p)
        batch = Prefill(ids, positions, key_valid, visual, [n])
        return batch, cache, logits

    @staticmethod
    def _pick(
        logits: Tensor, params: SamplingParams, seen: Tensor | None, gens: list[torch.Generator | None]
    ) -> Tensor:
        if params.greedy:
            return sample(logits, params, seen)
        rows = [
            sample(logits[i : i + 1], params, None if seen is None else seen[i : i + 1], g)
            for i, g in enumerate(gens)
        ]
        return torch.cat(rows)
