"""The generation engine: continuous batching over a pool of KV slots.

Requests join a running batch between decode steps and leave when they finish (`add_request`, `abort`,
`step`). Each `step()` does a bounded amount of prefill for up to `max_prefill_seqs` newcomers (views
through the vision tower and into their hyper layers' K/V, all of the step's views in one tower batch;
then prompt tokens, all of the step's pieces in one forward), then one decode token for every running
request, in one forward. So a 400-image prompt never stalls the other streams for its whole prefill,
sixteen short questions arriving together are prefilled in one forward, and a finished request's slot is
free for the next one at once.

- Text KV: one `KVPool` (slots x capacity per layer). Decoding requests sit in slots 0..n-1 (a leaving
  request's slot is filled by the last one), so the decode step reads views of the pool, with the same
  shapes from step to step (its key window grows in buckets of `kv_bucket` tokens); the requests being
  prefilled have slots of their own past them.
- Visual K/V: each request keeps its own (no padding to the largest image count); rows without media
  skip the cross branch (`RowVisuals`). Every view's K/V before MI-RoPE are kept in a byte-bounded LRU
  keyed by its pixels (`MediaCache`): a conversation that resends its pictures runs no vision tower
  (owl3/inference/visual.py).
- Prefix cache (off unless `prefix_cache_mb`): a prompt that continues an earlier request's tokens, with
  the same pictures, starts from that request's text KV and prefills only the rest (`PrefixCache`).
- Sampling: every row has its own settings and its own seeded stream, in one batched operation
  (`sampling.sample`): a request's tokens do not depend on who else is in the batch.
- A request may start from a saved `PromptMemory` (owl3/inference/memory.py): its prefix's text KV and
  visual K/V go into its slot, and only the rest of the prompt is prefilled.

The engine knows tensors and token ids only: templates and text are the processor's and the API's job. It
is not thread-safe: one thread owns it (the server's worker, or the caller of `generate`).
"""

from __future__ import annotations

import itertools
from collections import deque
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import replace

import torch
import torch.nn.functional as F
from torch import Tensor

from owl3.errors import Owl3Error
from owl3.inference.kernels import attention_kernels, compiled
from owl3.inference.kv_cache import DecodeView, KVPool, RowsView, SlotView
from owl3.inference.media_cache import MediaCache
from owl3.inference.prefix_cache import Prefix, PrefixCache
from owl3.inference.request import PromptMemory, Request, TokenEvent, take
from owl3.inference.sampling import RowSampling, SamplingParams, request_seed, sample
from owl3.inference.visual import encode_pieces, features_context
from owl3.model import Owl3Model, RowVisuals, VisualContext
from owl3.model.layers import causal_mask
from owl3.processing import Encoding


class Engine:
    def __init__(
        self,
        model: Owl3Model,
        stop_token_ids: Sequence[int],
        pad_token_id: int,
        *,
        max_num_seqs: int = 8,
        max_prefill_seqs: int = 4,
        max_model_len: int | None = None,
        prefill_chunk: int = 2048,
        vision_chunk_size: int = 64,
        media_cache_mb: float = 512,
        prefix_cache_mb: float = 0,
        kv_bucket: int = 256,
        compile_decode: bool | str = False,
        split_prefill: bool | None = None,
    ) -> None:
        if min(max_num_seqs, max_prefill_seqs, prefill_chunk, vision_chunk_size, kv_bucket) < 1:
            raise Owl3Error(
                "max_num_seqs, max_prefill_seqs, prefill_chunk, vision_chunk_size and kv_bucket must be >= 1"
            )
        self.model = model
        self.stop_token_ids = tuple(stop_token_ids)
        self.pad_token_id = pad_token_id
        self.max_num_seqs = max_num_seqs
        # newcomers prefilled together (each in a pool slot of its own past the running ones)
        self.max_prefill_seqs = min(max_prefill_seqs, max_num_seqs)
        # prompt + answer never exceed this many tokens (default: the model's max_position_embeddings)
        self.max_model_len = max_model_len or model.cfg.text.max_position_embeddings
        self.prefill_chunk = prefill_chunk
        self.vision_chunk_size = vision_chunk_size
        self.kv_bucket = kv_bucket
        # the prefill's split cross-attention (VisualContext.split_prefill): None = on CUDA only
        self.split_prefill = split_prefill
        # the decode step (one token per row) may run through torch.compile (True: inductor, or a
        # backend's name); prefill never does
        backend = "inductor" if compile_decode is True else compile_decode
        self._decode_model = compiled(model, backend) if backend else model
        self.media_cache = MediaCache(int(media_cache_mb * 2**20))
        self.prefix_cache = PrefixCache(int(prefix_cache_mb * 2**20))
        self._ids = itertools.count()
        self.waiting: deque[Request] = deque()
        self.prefilling: list[Request] = []  # admitted, being prefilled (in slots past the running ones)
        self.running: list[Request] = []  # running[i] decodes in slot i
        self._events: list[TokenEvent] = []  # abort events for the next step
        self._pool: KVPool | None = None
        self._batch: tuple[RowSampling, RowVisuals | None] | None = None  # of `running`, made on change
        self._slot_state: dict[str, Tensor] = {}
        self._seen_pool: Tensor | None = None  # (slots, V) bool, made when a request first needs it
        self._decoded_last = True  # whether the last step ended with a decode step

    # ------------------------------------------------------------------ requests
    @property
    def has_unfinished(self) -> bool:
        return bool(self.waiting or self.prefilling or self.running or self._events)

    @property
    def num_running(self) -> int:
        return len(self.running) + len(self.prefilling)

    @property
    def num_waiting(self) -> int:
        return len(self.waiting)

    @property
    def media_cache_hits(self) -> int:
        return self.media_cache.hits

    @property
    def prefix_tokens_reused(self) -> int:
        return self.prefix_cache.tokens_reused

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
            if any(r.id == request_id for r in self.prefilling):
                self.prefilling = [r for r in self.prefilling if r.id != request_id]
            elif any(r.id == request_id for r in self.waiting):
                self.waiting = deque(r for r in self.waiting if r.id != request_id)
            else:
                return False
        self._events.append(TokenEvent(request_id, -1, "abort"))
        return True

    def step(self) -> list[TokenEvent]:
        """One scheduler step: prefill pieces of newcomers within the step's budget, then one token for
        every running request. Returns the events of this step, in order.

        A piece is the next `vision_chunk_size` views or `prefill_chunk` prompt tokens of a request being
        prefilled (its pieces are always cut at the same places, whoever else is there). A step takes,
        in arrival order, the vision pieces that fit in one piece's worth of views and runs them through
        the tower together, then the text pieces (of requests whose views are in) that fit in one piece's
        worth of tokens and runs them in one forward (each phase runs at least one piece). A step that
        gives newcomers their first tokens returns them before the decode step, which the next call runs
        (unless the step before did the same)."""
        events, self._events = self._events, []
        with torch.inference_mode(), attention_kernels(self.model.device):
            while (
                self.waiting
                and len(self.prefilling) < self.max_prefill_seqs
                and len(self.running) + len(self.prefilling) < self.max_num_seqs
            ):
                self._admit(self.waiting.popleft())
            vision = take(
                [(r, min(self.vision_chunk_size, r.n_views - r.views_done)) for r in self.prefilling
                 if r.visual is None and r.n_views],
                self.vision_chunk_size,
            )  # fmt: skip
            if vision:
                self._encode_pieces(vision)
            text = take(
                [(r, min(self.prefill_chunk, r.prompt_len - r.prefilled)) for r in self.prefilling
                 if r.visual is not None or not r.n_views],
                self.prefill_chunk,
            )  # fmt: skip
            if text:
                first = self._prefill_text(text)
                events += first
                if first and self._decoded_last:
                    # hand the first tokens out now: the decode step runs at the next call (every other
                    # step at the least, so a stream of newcomers never stalls the running requests)
                    self._decoded_last = False
                    return events
            if self.running:
                events += self._decode_step()
            self._decoded_last = True
        return events

    def generate(
        self,
        encodings: Sequence[Encoding],
        params: SamplingParams | Sequence[SamplingParams],
        memory: PromptMemory | None = None,
    ) -> Iterator[TokenEvent]:
        """Run requests to their end: a TokenEvent per generated token, `request_id` being the request's
        index in `encodings`. `params`: one for all, or one per encoding. Closing the iterator early
        aborts what is left."""
        if not encodings:
            raise Owl3Error("nothing to generate: the batch is empty")
        per = [params] * len(encodings) if isinstance(params, SamplingParams) else list(params)
        if len(per) != len(encodings):
            raise Owl3Error(f"{len(per)} sampling settings for {len(encodings)} requests; give one each")
        for i, e in enumerate(encodings):  # refuse the batch before queueing any of it
            self.check_length(int(e.input_ids.shape[0]), i)
            per[i].validate()
        return self.generate_each(zip(encodings, per, strict=True), memory, in_flight=len(encodings))

    def generate_each(
        self,
        requests: Iterable[tuple[Encoding, SamplingParams]],
        memory: PromptMemory | None = None,
        in_flight: int | None = None,
    ) -> Iterator[TokenEvent]:
        """`generate` over a stream of (encoding, sampling) pairs, as one continuous batch: the next pair is
        taken as `in_flight` requests (default: the running and prefilling slots) finish, so a long
        stream never waits for a batch to drain and is not encoded all at once. New pairs join once half
        the room is free, so their prefills run as one batch (docs/benchmarks/2026-12-07-eval-stream).
        `request_id` of an event is the pair's index in the stream. A pair whose request is refused
        raises (`Owl3Error`) and aborts the others; so does closing the iterator early."""
        room = in_flight or self.max_num_seqs + self.max_prefill_seqs
        if room < 1:
            raise Owl3Error(f"in_flight must be at least 1, got {room}")
        source = iter(requests)
        index: dict[int, int] = {}  # engine id -> index in the stream
        left: set[int] = set()
        try:
            while True:
                refill = not left or room - len(left) >= (room + 1) // 2
                while refill and len(left) < room:
                    pair = next(source, None)
                    if pair is None:
                        break
                    rid = self.add_request(pair[0], pair[1], memory)
                    index[rid] = len(index)
                    left.add(rid)
                if not left:
                    return
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
                self._encode_pieces([(req, min(self.vision_chunk_size, req.n_views - req.views_done))])
            return req.visual
        return self.encode_features(encodings)

    def encode_features(self, encodings: Sequence[Encoding]) -> VisualContext:
        """The batch's projected visual features, padded per row; each hyper layer's K/V follow lazily."""
        return features_context(self.model, encodings, self.vision_chunk_size, self.split_prefill)

    def _encode_pieces(self, pieces: list[tuple[Request, int]]) -> None:
        """The next `n` views of each (request, n) into its hyper-layer K/V (`visual.encode_pieces`)."""
        if not isinstance(self.model, Owl3Model):  # e.g. the concatenation baseline: features, all at once
            for req, _ in pieces:
                req.visual = self.encode_features([req.enc])
            return
        encode_pieces(self.model, self.media_cache, pieces, self.split_prefill)

    # ------------------------------------------------------------------ scheduling
    def _pool_for(self, length: int) -> KVPool:
        if self._pool is None:
            m = self.model
            s, dev = self.max_num_seqs + self.max_prefill_seqs, m.device
            self._pool = KVPool(m.cfg.text, s, self.max_model_len, m.dtype, dev)
            self._slot_state = {
                "length": torch.zeros(s, dtype=torch.long, device=dev),  # tokens in the slot's cache
                "steps": torch.zeros(s, dtype=torch.long, device=dev),  # tokens generated
                "next": torch.zeros(s, dtype=torch.long, device=dev),  # the token to feed next
            }
        self._pool.ensure(length)
        return self._pool

    def _admit(self, req: Request) -> None:
        """Give a waiting request a prefill slot (past the running ones) and what it can start from."""
        used = {r.slot for r in self.prefilling}
        req.slot = next(i for i in range(self.max_num_seqs, self.max_num_seqs + self.max_prefill_seqs)
                        if i not in used)  # fmt: skip
        self.prefilling.append(req)
        if req.memory is not None:
            mem = req.memory
            self._pool_for(int(mem.prefix_ids.shape[0])).load(req.slot, mem.text_kv)
            req.prefilled = int(mem.prefix_ids.shape[0])
            req.visual = mem.visual_context()
            req.visual.split_prefill = self.split_prefill
        elif self.prefix_cache.enabled:
            if req.n_views:
                req.view_keys = self.media_cache.keys(req.enc.pixel_values)
            enc = req.enc
            found = self.prefix_cache.match(enc.input_ids.cpu(), enc.media_starts, req.view_keys or [])
            if found is not None:
                entry, n = found
                self._pool_for(n).load(req.slot, [(k[:, :, :n], v[:, :, :n]) for k, v in entry.kv])
                req.prefilled = n

    def _prefill_text(self, pieces: list[tuple[Request, int]]) -> list[TokenEvent]:
        """The next `c` prompt tokens of each (request, c), in one forward; a request whose prompt is then
        in gets its first token and joins the decode batch."""
        dev = self.model.device
        if len(pieces) == 1:  # alone: its own slot as the cache, plainly causal when it starts at 0
            (req, c), p = pieces[0], pieces[0][0].prefilled
            pool = self._pool_for(p + c)
            ids = req.enc.input_ids[p : p + c].to(dev)[None]  # (1, c)
            positions = torch.arange(p, p + c, device=dev)[None]
            mask = None if p == 0 else causal_mask(torch.ones(1, p + c, dtype=torch.bool, device=dev), c)
            cache: SlotView | RowsView = SlotView(pool, req.slot, p)
            visual: VisualContext | RowVisuals | None = req.visual
        else:  # left-padded to the longest piece, so that every row's last column is its last token
            width = max(c for _, c in pieces)
            starts = torch.tensor([r.prefilled for r, _ in pieces], device=dev)[:, None]  # (k, 1)
            counts = torch.tensor([c for _, c in pieces], device=dev)[:, None]
            pool = self._pool_for(int((starts + counts).max()))
            pad = self.pad_token_id
            ids = torch.stack(
                [
                    F.pad(r.enc.input_ids[r.prefilled : r.prefilled + c], (width - c, 0), value=pad)
                    for r, c in pieces
                ]
            ).to(dev)  # (k, width)
            # (k, width): each column's position; padding columns sit at the row's first position
            positions = (starts + torch.arange(width, device=dev)[None] - (width - counts)).clamp_min(starts)
            cache = RowsView(pool, [r.slot for r, _ in pieces], [r.prefilled for r, _ in pieces],
                             [c for _, c in pieces])  # fmt: skip
            # (k, 1, width, length): a column sees its slot's positions up to its own
            mask = (torch.arange(cache.length, device=dev)[None, None] <= positions[:, :, None])[:, None]
            rows = [r.visual for r, _ in pieces]
            visual = None
            if any(v is not None for v in rows):
                visual = RowVisuals(rows, dev, after_prompt=False, counts=[c for _, c in pieces])
        logits = self.model(ids, positions, mask, cache, visual, True)  # (k, 1, V)
        events = []
        for i, (req, c) in enumerate(pieces):
            req.prefilled += c
            if req.prefilled == req.prompt_len:
                self.prefilling.remove(req)
                events += self._start(req, logits[i : i + 1, -1])
        return events

    def _start(self, req: Request, logits: Tensor) -> list[TokenEvent]:
        """A request whose prompt is in: its first token from `logits` (1, V), then (unless that ends it)
        it moves from its prefill slot to the end of the decode batch."""
        n, dev = req.prompt_len, self.model.device
        rows = RowSampling.of([req.params], [req.seed], dev)
        seen = None
        if rows.any_penalty:
            seen = torch.zeros(1, logits.shape[-1], dtype=torch.bool, device=dev)
            seen[0, req.enc.input_ids.to(dev)] = True
        token = int(sample(logits, rows, seen, 0).item())
        event = self._record(req, token)
        if event.finished:
            return [event]
        slot = len(self.running)
        self._pool.move(req.slot, slot, n)
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
            visual = RowVisuals(media, dev) if any(v is not None for v in media) else None
            if visual is not None and isinstance(self.model, Owl3Model):
                visual.prepare([layer.self_attn.layer_idx for layer in self.model.hyper_layers])
            self._batch = (rows, visual)
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
                if self.prefix_cache.enabled:
                    self._keep_prefix(i)
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

    def _keep_prefix(self, slot: int) -> None:
        """Offer a finished request's prompt and answer to the prefix cache (all but the last token, which
        was never fed)."""
        req = self.running[slot]
        ids = torch.cat([req.enc.input_ids.cpu(), torch.tensor(req.generated[:-1], dtype=torch.long)])
        if req.view_keys is None and req.n_views:
            req.view_keys = self.media_cache.keys(req.enc.pixel_values)
        kv = self._pool.read(slot, len(ids))
        self.prefix_cache.put(Prefix(ids, list(req.enc.media_starts), req.view_keys or [], kv))

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
