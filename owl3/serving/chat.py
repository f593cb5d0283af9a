"""POST /v1/chat/completions: body -> checks -> encoding (thread pool) -> the engine worker -> the answer.

The order is the order of the answers a client can get: 503 while shutting down, 413 for a body over the
limit, 400 for a bad request, 404 for another model, 429 when the queue is full, 400 for bad media or a
prompt over the context (found while encoding, before the request queues for the engine). Then the
answer: one JSON body, or Server-Sent Events ending with `data: [DONE]`. A client that goes away has its
request aborted in the engine (its slot is free by the next step); an error after the stream has started
is sent as an error event, then `[DONE]`.
"""

from __future__ import annotations

import asyncio
import time
import uuid
from collections.abc import AsyncIterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from functools import partial
from typing import Any

from fastapi import Request
from fastapi.responses import JSONResponse, Response, StreamingResponse

from owl3.serving import protocol as P
from owl3.serving.media import ClipCache, MediaPolicy, MiB
from owl3.serving.metrics import Metrics
from owl3.serving.prepare import Limits, Prepared, prepare
from owl3.serving.protocol import APIError
from owl3.serving.text import TextStream
from owl3.serving.worker import Handle, Worker


@dataclass(frozen=True)
class ServeConfig:
    model_name: str = "owl3"
    api_key: str | None = None
    limits: Limits = field(default_factory=Limits)
    media: MediaPolicy = field(default_factory=MediaPolicy)
    max_queue: int = 64  # requests allowed to wait beyond the engine's batch (max_num_seqs); more get 429
    max_body_bytes: int = 128 * MiB
    shutdown_timeout_s: float = 30.0  # on SIGTERM, running requests get this long before an abort
    encode_threads: int = 4
    kb: Any = None  # a knowledge base (owl3.kb) for requests with "retrieval" (`owl3 serve --kb KB`)


class ChatService:
    """The state behind the chat endpoint: the worker, the encoding pool, the queue count."""

    def __init__(self, pipe: Any, engine: Any, config: ServeConfig, metrics: Metrics) -> None:
        self.pipe = pipe
        self.config = config
        self.metrics = metrics
        self.max_model_len = int(engine.max_model_len)
        self.max_num_seqs = int(engine.max_num_seqs)
        self.worker = Worker(engine, metrics.engine_state)
        self.pool = ThreadPoolExecutor(config.encode_threads, thread_name_prefix="owl3-encode")
        self.clips = ClipCache()  # a conversation's video, sampled once for all its turns
        self.in_flight = 0  # requests submitted to the worker and not yet answered
        self.draining = False

    @property
    def capacity(self) -> int:
        return self.max_num_seqs + self.config.max_queue

    def _check_room(self) -> None:
        if self.in_flight >= self.capacity:
            raise APIError(
                429,
                f"the server is busy ({self.in_flight} requests running or queued); retry shortly",
                code="queue_full",
                headers={"Retry-After": "1"},
            )

    async def handle(self, request: Request) -> Response:
        t0 = time.perf_counter()
        if self.draining:
            raise APIError(503, "the server is shutting down", code="shutting_down")
        req = P.parse_request(await _read_body(request, self.config.max_body_bytes))
        problem = req.unsupported()
        if problem is not None:
            raise problem
        if req.model is not None and req.model != self.config.model_name:
            raise APIError(
                404,
                f"the model {req.model[:100]!r} does not exist; this server serves "
                f"{self.config.model_name!r}",
                code="model_not_found",
                param="model",
            )
        self._check_room()  # shed load before decoding any media
        loop = asyncio.get_running_loop()
        prep: Prepared = await loop.run_in_executor(
            self.pool,
            prepare,
            self.pipe,
            req,
            self.config.limits,
            self.config.media,
            self.max_model_len,
            self.clips,
            self.config.kb,
        )
        self._check_room()  # again: others may have come in while this one was encoding
        handle = Handle(prep.encoding, prep.params, loop)
        self.in_flight += 1
        self.worker.submit(handle)
        try:
            await handle.accepted  # add_request may still refuse it (a 400)
        except BaseException:
            self.in_flight -= 1
            self.worker.abort(handle)  # if it was added after all (this task was cancelled), end it
            raise
        run = Run(self, prep, handle, t0, f"chatcmpl-{uuid.uuid4().hex}")
        if req.stream:
            return EventStream(run, bool(req.stream_options and req.stream_options.include_usage))
        return await run.collect(request)


async def _read_body(request: Request, limit: int) -> bytes:
    length = request.headers.get("content-length", "")
    too_large = APIError(
        413, f"the request body is over the server's {limit} byte limit", code="request_too_large"
    )
    if length.isdigit() and int(length) > limit:
        raise too_large
    chunks, size = [], 0
    async for chunk in request.stream():
        size += len(chunk)
        if size > limit:
            raise too_large
        chunks.append(chunk)
    return b"".join(chunks)


class EventStream(StreamingResponse):
    """The SSE response of a run; it closes the run even if the client left before the first event
    (the event generator then never starts, so its own cleanup never runs)."""

    def __init__(self, run: Run, include_usage: bool) -> None:
        super().__init__(
            run.sse(include_usage),
            media_type="text/event-stream",
            headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no"},
        )
        self.run = run

    async def __call__(self, scope: Any, receive: Any, send: Any) -> None:
        try:
            await super().__call__(scope, receive, send)
        finally:
            self.run.close()


class Run:
    """One submitted request: its token events as text deltas, its metrics, its cleanup."""

    def __init__(self, service: ChatService, prep: Prepared, handle: Handle, t0: float, rid: str) -> None:
        self.service, self.prep, self.handle, self.t0, self.rid = service, prep, handle, t0, rid
        self.model = service.config.model_name
        self.text = TextStream(service.pipe.tokenizer, prep.stop)
        self.tokens = 0
        # the answer's token ids, kept for its citations or shares
        self.ids: list[int] | None = [] if prep.hits is not None or prep.attribution else None
        self.finish: str | None = None
        self._last: float | None = None
        self._closed = False
        self._failed = False

    def usage(self) -> dict[str, int]:
        return P.usage(self.prep.prompt_tokens, self.tokens, self.prep.images, self.prep.frames)

    async def deltas(self) -> AsyncIterator[str]:
        """Text pieces as they come; sets `finish` once the answer is complete."""
        m, name = self.service.metrics, self.model
        while self.finish is None:
            item = await self.handle.events.get()
            if isinstance(item, BaseException):  # the engine failed; the worker dropped the request
                self._failed = True
                raise item
            now = time.perf_counter()
            if item.token_id < 0:  # the engine aborted it (the server is stopping)
                self.finish = "abort"
                break
            self.tokens += 1
            if self.ids is not None:
                self.ids.append(item.token_id)
            if self._last is None:
                m.ttft.labels(name).observe(now - self.t0)
            else:
                m.itl.labels(name).observe(now - self._last)
            self._last = now
            piece = self.text.push(item.token_id)
            if self.text.stopped:  # a stop string: the engine need not go on
                self.service.worker.abort(self.handle)
                self.finish = "stop"
            elif item.finish_reason is not None:
                piece += self.text.finish()
                self.finish = item.finish_reason
            if piece:
                yield piece

    async def collect(self, request: Request) -> Response:
        """The whole answer as one chat.completion; a client that goes away aborts it."""
        answer = asyncio.ensure_future(self._drain())
        gone = asyncio.ensure_future(_disconnected(request))
        try:
            done, _ = await asyncio.wait({answer, gone}, return_when=asyncio.FIRST_COMPLETED)
            if answer in done:
                answer.result()  # raises what the engine raised
        finally:
            gone.cancel()
            answer.cancel()
            self.close()
        if self.finish is None:
            return Response(status_code=499)  # the client is gone: nobody reads this
        body = P.completion(self.rid, self.model, self.text.text, self.finish, self.usage())
        if self.ids is not None:
            body.update(await self.extras())
        return JSONResponse(body)

    async def extras(self) -> dict[str, Any]:
        """owl3's extensions of the answer: the retrieved items with their scores and shares (`citations`),
        the shares of every image and frame (`shares`); each measure one more forward, in the pool."""
        from owl3.kb.answer import cite

        loop, measures, out = asyncio.get_running_loop(), {}, {}
        wanted = {self.prep.share if self.prep.hits is not None else None, self.prep.attribution} - {None}
        for measure in sorted(wanted):
            shares_of = partial(self.service.pipe.attention_shares, measure=measure, use_engine=False)
            measures[measure] = await loop.run_in_executor(
                self.service.pool, shares_of, self.prep.encoding, self.ids
            )
        if self.prep.hits is not None:
            out["citations"] = [c.to_dict() for c in cite(self.prep.hits, measures[self.prep.share])]
        if self.prep.attribution:
            out["shares"] = [s.to_dict() for s in measures[self.prep.attribution]]
        return out

    async def _drain(self) -> None:
        async for _ in self.deltas():
            pass

    async def sse(self, include_usage: bool) -> AsyncIterator[str]:
        created = int(time.time())
        try:
            yield P.chunk(self.rid, self.model, created, {"role": "assistant", "content": ""})
            async for piece in self.deltas():
                yield P.chunk(self.rid, self.model, created, {"content": piece})
            yield P.chunk(self.rid, self.model, created, {}, self.finish)
            if self.ids is not None and self.finish != "abort":  # owl3: a last chunk carries them
                yield P.sse(P.extras_chunk(self.rid, self.model, created, await self.extras()))
            if include_usage:
                yield P.chunk(self.rid, self.model, created, None, usage_=self.usage())
        except APIError as e:
            yield P.sse(e.body())
        except Exception as e:  # the stream has started: say that it failed rather than hang
            self._failed = True
            yield P.sse(P.error_body(500, f"the answer failed ({type(e).__name__})"))
        finally:
            # reached also when the client goes away: the response task is cancelled mid-await
            self.close()
        yield P.DONE

    def close(self) -> None:
        """Once per request: free its queue place, abort it in the engine if unfinished, count it."""
        if self._closed:
            return
        self._closed = True
        s, m, name = self.service, self.service.metrics, self.model
        s.in_flight -= 1
        if self.finish is None:
            s.worker.abort(self.handle)
            if not self._failed:
                m.aborted.labels(name).inc()
        elif self.finish == "abort":
            m.aborted.labels(name).inc()
        m.e2e.labels(name).observe(time.perf_counter() - self.t0)
        m.prompt_tokens.labels(name).inc(self.prep.prompt_tokens)
        m.generation_tokens.labels(name).inc(self.tokens)
        m.images.labels(name).inc(self.prep.images)
        m.video_frames.labels(name).inc(self.prep.frames)
        if self.finish is not None:
            m.finished.labels(name, self.finish).inc()


async def _disconnected(request: Request) -> None:
    """Returns when the client closes the connection (the body has been read already)."""
    while True:
        message = await request.receive()
        if message["type"] == "http.disconnect":
            return
