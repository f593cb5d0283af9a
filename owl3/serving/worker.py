"""The one thread that owns the engine: new requests in, token events out.

The engine is not thread-safe, so exactly one thread touches it. Its loop: take everything the event loop
sent (new requests -> `add_request`, aborts -> `abort`), then run one `step()` while work remains, or
block on the inbox when there is none. Each step's events go back to the event loop in one
`loop.call_soon_threadsafe` call, onto each request's own asyncio queue. The async side never waits for
the engine: it only puts messages in the inbox (a thread-safe queue) and reads its queues.

Not a scheduler: which request runs when is the engine's business; the worker only feeds it and keeps the
map from engine request ids to the waiting clients.
"""

from __future__ import annotations

import asyncio
import logging
import queue
import threading
import time
from collections.abc import Callable
from typing import Any

from owl3.errors import Owl3Error
from owl3.serving.protocol import APIError, bad_request

log = logging.getLogger("owl3.serve")


class Handle:
    """One request between the event loop and the worker."""

    def __init__(self, encoding: Any, params: Any, loop: asyncio.AbstractEventLoop) -> None:
        self.encoding = encoding
        self.params = params
        self.accepted: asyncio.Future[int] = loop.create_future()  # the engine's id, or the refusal
        self.events: asyncio.Queue = asyncio.Queue()  # TokenEvent, or an Exception that ends the request
        self.request_id: int | None = None  # set by the worker thread
        self.finished = False  # set by the worker thread once the engine gave its last event
        self.aborted = False  # set by the worker thread once it asked the engine to abort


def _resolve(future: asyncio.Future, value: Any) -> None:
    if future.done():  # the client went away and the handler cancelled it
        return
    if isinstance(value, BaseException):
        future.set_exception(value)
    else:
        future.set_result(value)


def _deliver(batch: list[tuple[Handle, Any]]) -> None:
    for handle, item in batch:
        handle.events.put_nowait(item)


class Worker:
    """Feeds one engine from a thread of its own; `submit`/`abort` are called from the event loop."""

    def __init__(self, engine: Any, on_state: Callable[[int, int, int, int], None] | None = None) -> None:
        self.engine = engine
        # (running, waiting, media-cache hits, prefix-cache tokens reused so far), after every step
        self.on_state = on_state
        self._inbox: queue.SimpleQueue = queue.SimpleQueue()
        self._active: dict[int, Handle] = {}
        self._abort_at: float | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._thread = threading.Thread(target=self._run, name="owl3-engine", daemon=True)

    # ---------------------------------------------------------------------- the event loop's side
    def start(self, loop: asyncio.AbstractEventLoop) -> None:
        """Run the engine thread; results go to `loop`, the loop of every request's handler."""
        self._loop = loop
        self._thread.start()

    def submit(self, handle: Handle) -> None:
        if not self._thread.is_alive():  # it failed (logged): refuse rather than wait forever
            handle.accepted.set_exception(APIError(503, "the engine worker is not running"))
            return
        self._inbox.put(("add", handle))

    def abort(self, handle: Handle) -> None:
        self._inbox.put(("abort", handle))

    def drain(self, deadline_s: float) -> None:
        """Let the running requests go on for `deadline_s` seconds, then abort those still running."""
        self._inbox.put(("drain", time.monotonic() + deadline_s))

    def stop(self, timeout: float = 10.0) -> None:
        """Abort whatever still runs, tell its clients, and end the thread."""
        if self._thread.is_alive():
            self._inbox.put(("stop", None))
            self._thread.join(timeout)

    @property
    def alive(self) -> bool:
        return self._thread.is_alive()

    # ---------------------------------------------------------------------- the worker thread
    def _run(self) -> None:
        try:
            self._serve()
        except Exception:  # a bug here must not leave clients waiting forever
            log.exception("the engine worker failed")
            batch = [(h, APIError(500, "the engine worker failed")) for h in self._active.values()]
            self._post(_deliver, batch)
            while True:  # requests that were on their way in
                try:
                    kind, arg = self._inbox.get_nowait()
                except queue.Empty:
                    break
                if kind == "add":
                    self._post(_resolve, arg.accepted, APIError(503, "the engine worker is not running"))

    def _serve(self) -> None:
        stopping = False
        while True:
            busy = self.engine.has_unfinished
            try:  # block only when the engine has nothing to do
                msg = self._inbox.get(block=not busy)
            except queue.Empty:
                msg = None
            while msg is not None:
                stopping |= self._handle(msg)
                try:
                    msg = self._inbox.get_nowait()
                except queue.Empty:
                    msg = None
            if stopping or (self._abort_at is not None and time.monotonic() >= self._abort_at):
                self._abort_all()
            if self.engine.has_unfinished:
                self._step()
            elif stopping:
                return

    def _handle(self, msg: tuple[str, Any]) -> bool:
        kind, arg = msg
        if kind == "add":
            self._add(arg)
        elif kind == "abort":
            if arg.request_id is not None and arg.request_id in self._active:
                self._abort(arg)
        elif kind == "drain":
            self._abort_at = arg
        return kind == "stop"

    def _add(self, handle: Handle) -> None:
        try:
            rid = self.engine.add_request(handle.encoding, handle.params)
        except Owl3Error as e:
            self._post(_resolve, handle.accepted, bad_request(str(e)))
            return
        except Exception as e:  # a bug or a device failure: the client gets a 500, the worker goes on
            log.exception("add_request failed")
            self._post(_resolve, handle.accepted, APIError(500, f"the engine failed ({type(e).__name__})"))
            return
        handle.request_id = rid
        self._active[rid] = handle
        self._post(_resolve, handle.accepted, rid)

    def _abort(self, handle: Handle) -> None:
        if not handle.aborted and not handle.finished:
            handle.aborted = True
            self.engine.abort(handle.request_id)

    def _abort_all(self) -> None:
        for handle in list(self._active.values()):
            self._abort(handle)

    def _step(self) -> None:
        try:
            events = self.engine.step()
        except Exception as e:
            log.exception("engine step failed")
            message = f"the engine failed ({type(e).__name__}); the request was dropped"
            batch = [(h, APIError(500, message)) for h in self._active.values()]
            for rid in list(self._active):
                try:
                    self.engine.abort(rid)
                except Exception:  # the engine is in trouble already; its slots are lost, not the server
                    log.exception("abort after a failed step failed")
            self._active.clear()
            self._post(_deliver, batch)
            time.sleep(0.1)  # an engine that keeps failing must not spin this thread
            return
        batch = []
        for ev in events:
            handle = self._active.get(ev.request_id)
            if handle is None:
                continue
            batch.append((handle, ev))
            if ev.finish_reason is not None:
                handle.finished = True
                del self._active[ev.request_id]
        if batch:
            self._post(_deliver, batch)
        if self.on_state is not None:
            e = self.engine
            hits, reused = getattr(e, "media_cache_hits", 0), getattr(e, "prefix_tokens_reused", 0)
            self.on_state(e.num_running, e.num_waiting, int(hits), int(reused))

    def _post(self, fn: Callable[..., None], *args: Any) -> None:
        try:
            self._loop.call_soon_threadsafe(fn, *args)
        except RuntimeError:  # the event loop is closed: nobody is listening any more
            pass
