"""The generation engine: continuous batching over a pool of KV slots.

Requests join a running batch between decode steps and leave when they finish (`add_request`, `abort`,
`step`). Each `step()` does a bounded piece of one newcomer's prefill (its next `vision_chunk_size` views
through the vision tower and into its hyper layers' K/V, or its next `prefill_chunk` prompt tokens), then
one decode token for every running request, in one forward. So a 400-image prompt never stalls the other
streams for its whole prefill, and a finished request's slot is free for the next one at once.

- Text KV: one `KVPool` (slots x capacity per layer). Decoding requests sit in slots 0..n-1 (a leaving
  request's slot is filled by the last one), so the decode step reads views of the pool, with the same
  shapes from step to step (its key window grows in buckets of `kv_bucket` tokens); the request being
  prefilled has a slot of its own past them.
- Visual K/V: each request keeps its own (no padding to the largest image count); rows without media
  skip the cross branch (`RowVisuals`). The projected features of every view are kept in a byte-bounded
  LRU keyed by its pixels (`MediaCache`): a conversation that resends its pictures runs no vision tower.
- Sampling: every row has its own settings and its own seeded stream, in one batched operation
  (`sampling.sample`): a request's tokens do not depend on who else is in the batch.
- A request may start from a saved `PromptMemory` (owl3/inference/memory.py): its prefix's text KV and
  visual K/V go into its slot, and only the rest of the prompt is prefilled.

The engine knows tensors and token ids only: templates and text are the processor's and the API's job. It
is not thread-safe: one thread owns it (the server's worker, or the caller of `generate`).
"""

from __future__ import annotations

import itertools
import weakref
from collections import deque
from collections.abc import Iterator, Sequence
from contextlib import AbstractContextManager, nullcontext
from dataclasses import dataclass, field, replace
from typing import Protocol

import torch
from torch import Tensor
from torch.nn.attention import SDPBackend, sdpa_kernel

from owl3.errors import Owl3Error
from owl3.inference.kv_cache import DecodeView, KVPool, SlotView
from owl3.inference.media_cache import MediaCache
from owl3.inference.sampling import RowSampling, SamplingParams, request_seed, sample
from owl3.model import Owl3Model, RowVisuals, VisualContext
from owl3.model.layers import causal_mask
from owl3.processing import Encoding


@dataclass(frozen=True)
class TokenEvent:
    """One generated token of a request; `finish_reason` ("stop", "length" or "abort") on its last event.
    An abort event carries token_id -1."""

    request_id: int
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

    Sizes are symbolic (`dynamic=True`): one graph serves every batch size and key window.
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


@dataclass(eq=False)
class Request:
    """A request's state inside the engine."""

    id: int
    enc: Encoding
    params: SamplingParams
    seed: int
    stop: frozenset[int]
    memory: PromptMemory | None = None
    visual: VisualContext | None = None
    kv: dict[int, tuple[Tensor, Tensor]] | None = None  # visual K/V being written, view by view
    views_done: int = 0
    prefilled: int = 0  # prompt tokens in the KV cache
    generated: list[int] = field(default_factory=list)

    @property
    def prompt_len(self) -> int:
        return int(self.enc.input_ids.shape[0])

    @property
    def n_views(self) -> int:
        return 0 if self.enc.pixel_values is None else int(self.enc.pixel_values.shape[0])


class Engine:
    def __init__(
        self,
        model: Owl3Model,
        stop_token_ids: Sequence[int],
        pad_token_id: int,
        *,
        max_num_seqs: int = 8,
        max_model_len: int | None = None,
        prefill_chunk: int = 2048,
        vision_chunk_size: int = 64,
        media_cache_mb: float = 512,
        kv_bucket: int = 256,
        compile_decode: bool = False,
        split_prefill: bool | None = None,
    ) -> None:
        if max_num_seqs < 1 or prefill_chunk < 1 or vision_chunk_size < 1 or kv_bucket < 1:
            raise Owl3Error("max_num_seqs, prefill_chunk, vision_chunk_size and kv_bucket must be >= 1")
        self.model = model
        self.stop_token_ids = tuple(stop_token_ids)
        self.pad_token_id = pad_token_id
        self.max_num_seqs = max_num_seqs
        # prompt + answer never exceed this many tokens (default: the model's max_position_embeddings)
        self.max_model_len = max_model_len or model.cfg.text.max_position_embeddings
        self.prefill_chunk = prefill_chunk
        self.vision_chunk_size = vision_chunk_size
        self.kv_bucket = kv_bucket
        # the prefill's split cross-attention (VisualContext.split_prefill): None = on CUDA only
        self.split_prefill = split_prefill
        # the decode step (one token per row) may run through torch.compile; prefill never does
        self._decode_model = compiled(model) if compile_decode else model
        self.media_cache = MediaCache(int(media_cache_mb * 2**20))
        self._ids = itertools.count()
        self.waiting: deque[Request] = deque()
        self.prefilling: Request | None = None
        self.running: list[Request] = []  # running[i] decodes in slot i
        self._events: list[TokenEvent] = []  # abort events for the next step
        self._pool: KVPool | None = None
        self._batch: tuple[RowSampling, RowVisuals | None] | None = None  # of `running`, made on change
        self._slot_state: dict[str, Tensor] = {}
        self._seen_pool: Tensor | None = None  # (slots, V) bool, made when a request first needs it

    # ------------------------------------------------------------------ requests
    @property
    def has_unfinished(self) -> bool:
        return bool(self.waiting or self.prefilling or self.running or self._events)

    @property
    def num_running(self) -> int:
        return len(self.running) + (self.prefilling is not None)

    @property
    def num_waiting(self) -> int:
        return len(self.waiting)

    @property
    def media_cache_hits(self) -> int:
        return self.media_cache.hits

    def check_length(self, n: int, index: int = 0, reserve: int = 1) -> None:
        """Refuse a prompt that leaves fewer than `reserve` positions for the answer."""
        if n + reserve > self.max_model_len:
            raise Owl3Error(
                f"prompt {index} is {n} tokens long, but the model handles at most "
                f"{self.max_model_len - reserve} prompt tokens (max_position_embeddings); "
                "shorten the text or use fewer images/frames"
            )

    def add_request(
        self, encoding: Encoding, params: SamplingParams, memory: PromptMemory | None = None
    ) -> int:
        """Queue a request; returns its id. Raises `Owl3Error` for bad sampling values, a prompt over the
        context, or a prompt that does not continue `memory`'s."""
        params.validate()
        self.check_length(int(encoding.input_ids.shape[0]))
        if memory is not None:
            n, p = int(encoding.input_ids.shape[0]), int(memory.prefix_ids.shape[0])
            if n <= p or not torch.equal(encoding.input_ids[:p].cpu(), memory.prefix_ids.cpu()):
                raise Owl3Error(
                    "the prompt does not continue the memory's prompt; ask through the memory's own API "
                    '(owl3 generate --memory FILE "question") so the prompt starts the same way'
                )
        stop = frozenset(self.stop_token_ids) | frozenset(params.stop_token_ids)
        req = Request(next(self._ids), encoding, params, request_seed(params), stop, memory)
        self.waiting.append(req)
        return req.id

    def abort(self, request_id: int) -> bool:
        """Drop a request wherever it is; its slot is free at once and the next `step()` reports
        TokenEvent(request_id, -1, "abort"). False if the engine does not hold it (finished or unknown)."""
        for i, r in enumerate(self.running):
            if r.id == request_id:
                with torch.inference_mode():  # the pool's tensors are inference tensors
                    self._release(i)
                break
        else:
            if self.prefilling is not None and self.prefilling.id == request_id:
                self.prefilling = None
            elif any(r.id == request_id for r in self.waiting):
                self.waiting = deque(r for r in self.waiting if r.id != request_id)
            else:
                return False
        self._events.append(TokenEvent(request_id, -1, "abort"))
        return True

    def step(self) -> list[TokenEvent]:
        """One scheduler step: prefill pieces of newcomers within the step's budget, then one token for
        every running request. Returns the events of this step, in order.

        A piece is the next `vision_chunk_size` views or `prefill_chunk` prompt tokens of the request being
        prefilled (its pieces are always cut at the same places, so its numbers do not depend on who else
        is there); a step runs whole pieces, of one request after another, while they fit in one piece's
        worth of views and of tokens (at least one piece)."""
        events, self._events = self._events, []
        views, tokens = self.vision_chunk_size, self.prefill_chunk  # what this step may still prefill
        with torch.inference_mode(), attention_kernels(self.model.device):
            while True:
                if self.prefilling is None and self.waiting and len(self.running) < self.max_num_seqs:
                    self._admit(self.waiting.popleft())
                req = self.prefilling
                if req is None:
                    break
                need_views, need_tokens = self._next_piece(req)
                first = views == self.vision_chunk_size and tokens == self.prefill_chunk
                if not first and (need_views > views or need_tokens > tokens):
                    break
                views, tokens = views - need_views, tokens - need_tokens
                events += self._prefill_step(req)
            if self.running:
                events += self._decode_step()
        return events

    def generate(
        self, encodings: Sequence[Encoding], params: SamplingParams, memory: PromptMemory | None = None
    ) -> Iterator[TokenEvent]:
        """Run requests to their end: a TokenEvent per generated token, `request_id` being the request's
        index in `encodings`. Closing the iterator early aborts what is left."""
        if not encodings:
            raise Owl3Error("nothing to generate: the batch is empty")
        for i, e in enumerate(encodings):  # refuse the batch before queueing any of it
            self.check_length(int(e.input_ids.shape[0]), i)
        index = {self.add_request(e, params, memory): i for i, e in enumerate(encodings)}
        left = set(index)
        try:
            while left:
                for ev in self.step():
                    if ev.request_id in index:
                        if ev.finished:
                            left.discard(ev.request_id)
                        yield replace(ev, request_id=index[ev.request_id])
        finally:
            for rid in left:
                self.abort(rid)
            self._events = [ev for ev in self._events if ev.request_id not in index]

    # ------------------------------------------------------------------ visual side
    def encode_visual(self, encodings: Sequence[Encoding]) -> VisualContext | None:
        """Every image of a batch at once (a forward outside the step loop: `logits`, `watch`); None if
        the batch has no image. One request goes straight to the hyper layers' K/V, through the media
        cache; several get padded features."""
        if all(e.pixel_values is None for e in encodings):
            return None
        if len(encodings) == 1 and isinstance(self.model, Owl3Model):
            req = Request(-1, encodings[0], SamplingParams(), 0, frozenset())
            while req.visual is None:
                self._encode_views(req)
            return req.visual
        return self.encode_features(encodings)

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
        starts = [e.media_starts for e in encodings]
        offset = getattr(self.model.cfg, "mi_rope_offset", 1)
        ctx = VisualContext.build(per_sample, starts, offset)
        ctx.split_prefill = self.split_prefill
        return ctx

    def _encode_views(self, req: Request) -> None:
        """The next `vision_chunk_size` views of `req`: features from the media cache or the tower, then
        into the request's hyper-layer K/V; sets `req.visual` after the last one."""
        model, pixels = self.model, req.enc.pixel_values
        if not isinstance(model, Owl3Model):  # e.g. the concatenation baseline: features, all at once
            req.visual = self.encode_features([req.enc])
            return
        if req.kv is None:
            req.kv = model.visual_kv_buffers(req.n_views)
        a, b = req.views_done, min(req.n_views, req.views_done + self.vision_chunk_size)
        cache = self.media_cache
        if cache.enabled:
            keys = cache.keys(pixels[a:b])
            cached: list[Tensor | None] = [cache.get(k) for k in keys]
            todo = [i for i, f in enumerate(cached) if f is None]
            if todo:
                new = model.encode_media(pixels[[a + i for i in todo]], None)  # (n, T, D)
                for j, i in enumerate(todo):
                    cached[i] = new[j]
                    cache.put(keys[i], new[j])
            feats = torch.stack(cached)
        else:
            feats = model.encode_media(pixels[a:b], None)  # (b - a, T, D)
        positions = model.visual_layout(req.enc.media_starts)[1][None]
        model.write_visual_kv(req.kv, feats, positions, a)
        req.views_done = b
        if b == req.n_views:
            req.visual = model.visual_context_from_kv(req.kv, req.enc.media_starts)
            req.visual.split_prefill = self.split_prefill
            req.kv = None

    # ------------------------------------------------------------------ scheduling
    def _pool_for(self, length: int) -> KVPool:
        if self._pool is None:
            m = self.model
            self._pool = KVPool(m.cfg.text, self.max_num_seqs + 1, self.max_model_len, m.dtype, m.device)
            s, dev = self.max_num_seqs + 1, m.device
            self._slot_state = {
                "length": torch.zeros(s, dtype=torch.long, device=dev),  # tokens in the slot's cache
                "steps": torch.zeros(s, dtype=torch.long, device=dev),  # tokens generated
                "next": torch.zeros(s, dtype=torch.long, device=dev),  # the token to feed next
            }
        self._pool.ensure(length)
        return self._pool

    @property
    def _prefill_slot(self) -> int:
        return self.max_num_seqs

    def _admit(self, req: Request) -> None:
        self.prefilling = req
        if req.memory is not None:
            mem = req.memory
            self._pool_for(int(mem.prefix_ids.shape[0])).load(self._prefill_slot, mem.text_kv)
            req.prefilled = int(mem.prefix_ids.shape[0])
            req.visual = mem.visual_context()
            req.visual.split_prefill = self.split_prefill

    def _next_piece(self, req: Request) -> tuple[int, int]:
        """(views, prompt tokens) of the next prefill piece of `req`."""
        if req.enc.pixel_values is not None and req.visual is None:
            return min(self.vision_chunk_size, req.n_views - req.views_done), 0
        return 0, min(self.prefill_chunk, req.prompt_len - req.prefilled)

    def _prefill_step(self, req: Request) -> list[TokenEvent]:
        if req.enc.pixel_values is not None and req.visual is None:
            self._encode_views(req)
            return []
        return self._prefill_text(req)

    def _prefill_text(self, req: Request) -> list[TokenEvent]:
        """The next `prefill_chunk` prompt tokens of `req`; after the last, its first token."""
        n, p = req.prompt_len, req.prefilled
        c = min(self.prefill_chunk, n - p)
        pool = self._pool_for(p + c)
        dev = self.model.device
        ids = req.enc.input_ids[p : p + c].to(dev)[None]  # (1, c)
        positions = torch.arange(p, p + c, device=dev)[None]
        # the first chunk is plainly causal (fused kernels, no mask); later ones also see the earlier part
        mask = None if p == 0 else causal_mask(torch.ones(1, p + c, dtype=torch.bool, device=dev), c)
        logits = self.model(ids, positions, mask, SlotView(pool, self._prefill_slot, p), req.visual, True)
        req.prefilled = p + c
        if req.prefilled < n:
            return []
        # the prompt is in: its first token, then the request joins the decode batch
        self.prefilling = None
        rows = RowSampling.of([req.params], [req.seed], dev)
        seen = None
        if rows.any_penalty:
            seen = torch.zeros(1, logits.shape[-1], dtype=torch.bool, device=dev)
            seen[0, req.enc.input_ids.to(dev)] = True
        token = int(sample(logits[:, -1], rows, seen, 0).item())
        event = self._record(req, token)
        if event.finished:
            return [event]
        slot = len(self.running)
        pool.move(self._prefill_slot, slot, n)
        st = self._slot_state
        st["length"][slot], st["steps"][slot], st["next"][slot] = n, 1, token
        if seen is not None:
            self._seen()[slot] = seen[0]
            self._seen()[slot, token] = True
        if req.visual is not None:
            req.visual.start_decoding()  # from here on every query lies after all of its images
        self.running.append(req)
        self._batch = None
        return [event]

    def _decode_step(self) -> list[TokenEvent]:
        n, st, dev = len(self.running), self._slot_state, self.model.device
        longest = max(r.prompt_len + len(r.generated) for r in self.running)  # host-side: no sync
        pool = self._pool_for(longest)
        window = min(pool.capacity, -(-longest // self.kv_bucket) * self.kv_bucket)
        if self._batch is None:
            rows = RowSampling.of([r.params for r in self.running], [r.seed for r in self.running], dev)
            media = [r.visual for r in self.running]
            self._batch = (rows, RowVisuals(media, dev) if any(v is not None for v in media) else None)
        rows, visual = self._batch
        length = st["length"][:n]
        # (n, 1, 1, window): row i sees its own slot's tokens 0..length[i] (the new one included)
        mask = (torch.arange(window, device=dev)[None, :] <= length[:, None])[:, None, None, :]
        logits = self._decode_model(
            st["next"][:n, None], length[:, None], mask, DecodeView(pool, length, window), visual, True
        )[:, -1]
        seen = self._seen()[:n] if rows.any_penalty else None
        tokens = sample(logits, rows, seen, st["steps"][:n])  # (n,)
        st["length"][:n] += 1
        st["steps"][:n] += 1
        st["next"][:n] = tokens
        if seen is not None:
            seen[torch.arange(n, device=dev), tokens] = True
        events = [self._record(r, t) for r, t in zip(self.running, tokens.tolist(), strict=True)]
        for i in reversed(range(n)):  # from the end, so that moving the last request fills a hole
            if events[i].finished:
                self._release(i)
        return events

    def _record(self, req: Request, token: int) -> TokenEvent:
        req.generated.append(token)
        reason = None
        if token in req.stop:
            reason = "stop"
        elif len(req.generated) == req.params.max_new_tokens or (
            req.prompt_len + len(req.generated) >= self.max_model_len
        ):
            reason = "length"
        return TokenEvent(req.id, token, reason)

    def _release(self, slot: int) -> None:
        """Free running slot `slot`: the last running request moves into it."""
        last = len(self.running) - 1
        if slot != last:
            moved = self.running[last]
            self._pool.move(last, slot, moved.prompt_len + len(moved.generated))
            for t in self._slot_state.values():
                t[slot] = t[last]
            if self._seen_pool is not None:
                self._seen_pool[slot] = self._seen_pool[last]
            self.running[slot] = moved
        self.running.pop()
        self._batch = None

    def _seen(self) -> Tensor:
        """(slots, V) bool: the ids in each slot's context (for repetition penalties), made on first use."""
        if self._seen_pool is None:
            vocab = self.model.cfg.text.vocab_size
            self._seen_pool = torch.zeros(
                self.max_num_seqs + 1, vocab, dtype=torch.bool, device=self.model.device
            )
        return self._seen_pool
