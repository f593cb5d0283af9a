"""Shared pieces of the server tests: a scripted engine with the continuous-batching interface, a server
on a free local port in a thread, and media as data: URLs.

`FakeEngine` has exactly the interface the server uses (`add_request`, `abort`, `step`, `has_unfinished`,
`num_running`, `num_waiting`, `max_model_len`, `media_cache_hits`) and answers from a script instead of
a model, so queueing, aborts, 429s and failures can be made to happen on purpose. Its answer repeats the
last user turn: "You said: <text> (<n> views)". A user turn containing "LONG" gets an endless answer
(only max_tokens or an abort ends it); one containing "EXPLODE" makes `step()` raise.
"""

from __future__ import annotations

import base64
import io
import re
import socket
import threading
import time
from collections import deque
from dataclasses import dataclass

from owl3.errors import Owl3Error


@dataclass(frozen=True)
class TokenEvent:
    request_id: int
    token_id: int
    finish_reason: str | None = None


class FakeEngine:
    def __init__(self, tokenizer, stop_token_ids, *, max_num_seqs: int = 4, max_model_len: int = 600) -> None:
        self.tokenizer = tokenizer
        self.stop_id = stop_token_ids[0]
        self.max_num_seqs = max_num_seqs
        self.max_model_len = max_model_len
        self.paused = threading.Event()  # set: step() makes no progress (requests stay where they are)
        self.step_delay = 0.0  # seconds per step, to make a "decode step" take time
        self.media_cache_hits = 0
        self._seen_media: set[bytes] = set()
        self._next_id = 0
        self._waiting: deque[list] = deque()
        self._running: dict[int, list] = {}  # id -> [answer ids, position, max_new_tokens]
        self._aborted: list[int] = []
        self.added: list[int] = []
        self.aborted: list[int] = []

    # --------------------------------------------------------------- the interface
    def add_request(self, encoding, params) -> int:
        params.validate()
        n = int(encoding.input_ids.shape[0])
        if n >= self.max_model_len:
            raise Owl3Error(f"prompt is {n} tokens long, the engine takes {self.max_model_len - 1}")
        rid = self._next_id
        self._next_id += 1
        self._waiting.append([rid, encoding, params])
        self.added.append(rid)
        return rid

    def abort(self, request_id: int) -> None:
        self._running.pop(request_id, None)
        self._waiting = deque(w for w in self._waiting if w[0] != request_id)
        self._aborted.append(request_id)
        self.aborted.append(request_id)

    def step(self) -> list[TokenEvent]:
        events = [TokenEvent(rid, -1, "abort") for rid in self._aborted]
        self._aborted.clear()
        if self.paused.is_set():
            time.sleep(0.002)
            return events
        time.sleep(self.step_delay)
        while self._waiting and len(self._running) < self.max_num_seqs:
            rid, enc, params = self._waiting.popleft()
            if "EXPLODE" in _last_user(enc.prompt):
                raise RuntimeError("the fake engine exploded")
            self._cache(enc)
            self._running[rid] = [self._answer(enc), 0, params.max_new_tokens]
        for rid, state in list(self._running.items()):
            ids, pos, limit = state
            tok = ids[pos] if pos < len(ids) else ids[-1]
            state[1] = pos + 1
            reason = "stop" if tok == self.stop_id else ("length" if pos + 1 >= limit else None)
            events.append(TokenEvent(rid, tok, reason))
            if reason:
                del self._running[rid]
        return events

    @property
    def has_unfinished(self) -> bool:
        return bool(self._running or self._waiting or self._aborted)

    @property
    def num_running(self) -> int:
        return len(self._running)

    @property
    def num_waiting(self) -> int:
        return len(self._waiting)

    # --------------------------------------------------------------- the script
    def answer_text(self, user: str, views: int) -> str:
        return f"You said: {user} ({views} views)"

    def _answer(self, enc) -> list[int]:
        user = _last_user(enc.prompt)
        if "LONG" in user:
            return self.tokenizer.encode(" la" * 4096, add_special_tokens=False).ids
        views = len(enc.media_starts)
        text = self.answer_text(user.rsplit("<|image|>", 1)[-1].strip(), views)
        return self.tokenizer.encode(text, add_special_tokens=False).ids + [self.stop_id]

    def _cache(self, enc) -> None:
        if enc.pixel_values is None:
            return
        for view in enc.pixel_values:
            key = view.numpy().tobytes()
            if key in self._seen_media:
                self.media_cache_hits += 1
            self._seen_media.add(key)


def _last_user(prompt: str) -> str:
    turns = re.findall(r"<\|im_start\|>user\n(.*?)<\|im_end\|>", prompt, flags=re.S)
    return turns[-1] if turns else ""


class ServerThread:
    """A uvicorn server of `app` on a free port of 127.0.0.1, run in a daemon thread."""

    def __init__(self, app) -> None:
        from owl3.serving.app import make_server

        self.sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self.sock.bind(("127.0.0.1", 0))
        self.port = self.sock.getsockname()[1]
        self.url = f"http://127.0.0.1:{self.port}"
        self.app = app
        self.server = make_server(app, "127.0.0.1", self.port, log_level="warning")
        self.thread = threading.Thread(target=self.server.run, kwargs={"sockets": [self.sock]}, daemon=True)

    def __enter__(self) -> ServerThread:
        self.thread.start()
        deadline = time.monotonic() + 30
        while not self.server.started:
            if not self.thread.is_alive() or time.monotonic() > deadline:
                raise RuntimeError("the test server did not start")
            time.sleep(0.01)
        return self

    def __exit__(self, *exc) -> None:
        self.server.should_exit = True
        self.thread.join(15)


def png_bytes(img) -> bytes:
    buf = io.BytesIO()
    img.save(buf, format="PNG")
    return buf.getvalue()


def data_url(data: bytes, mime: str = "image/png") -> str:
    return f"data:{mime};base64," + base64.b64encode(data).decode()


def image_part(img) -> dict:
    return {"type": "image_url", "image_url": {"url": data_url(png_bytes(img))}}


def write_video(path, n_frames: int = 12, size: int = 64, seed: int = 0) -> None:
    """A small H.264 (or MPEG-4) video of moving coloured squares."""
    import av
    import numpy as np

    rng = np.random.default_rng(seed)
    with av.open(str(path), "w") as out:
        try:
            stream = out.add_stream("libx264", rate=4)
        except Exception:  # an FFmpeg build without x264
            stream = out.add_stream("mpeg4", rate=4)
        stream.width = stream.height = size
        stream.pix_fmt = "yuv420p"
        colour = rng.integers(0, 255, size=3)
        for i in range(n_frames):
            frame = np.full((size, size, 3), 30, dtype=np.uint8)
            x = (i * 5) % (size - 16)
            frame[20:36, x : x + 16] = colour
            for packet in stream.encode(av.VideoFrame.from_ndarray(frame, format="rgb24")):
                out.mux(packet)
        for packet in stream.encode():
            out.mux(packet)


def request(base: str, method: str, path: str, body=None, headers=None, timeout: float = 30.0):
    """One HTTP request with the standard library: (status, headers, body bytes). `body` may be a dict."""
    import http.client
    import json
    from urllib.parse import urlsplit

    parts = urlsplit(base)
    conn = http.client.HTTPConnection(parts.hostname, parts.port, timeout=timeout)
    hdrs = dict(headers or {})
    if isinstance(body, dict):
        body = json.dumps(body).encode()
        hdrs.setdefault("Content-Type", "application/json")
    try:
        conn.request(method, path, body=body, headers=hdrs)
        resp = conn.getresponse()
        return resp.status, {k.lower(): v for k, v in resp.getheaders()}, resp.read()
    finally:
        conn.close()


def sse_payloads(raw: bytes) -> list[str]:
    """The `data:` payloads of a Server-Sent Events body, in order."""
    return [line[6:] for line in raw.decode().split("\n") if line.startswith("data: ")]


def serve_fake_main(shutdown_timeout_s: float) -> None:
    """`owl3 serve`'s run() on the fake engine, in this process's main thread (for the SIGTERM test):
    prints the port, then serves until a signal ends it."""
    import sys

    import owl3
    from owl3.serving.app import create_app, run
    from owl3.serving.chat import ServeConfig

    pipe = owl3.load()
    engine = FakeEngine(pipe.tokenizer, pipe.processor.stop_token_ids)
    engine.step_delay = 0.02
    app = create_app(pipe, engine, ServeConfig(model_name="fake", shutdown_timeout_s=shutdown_timeout_s))
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.bind(("127.0.0.1", 0))
    print(sock.getsockname()[1], flush=True)
    sys.exit(run(app, "127.0.0.1", 0, sock=sock, log_level="warning"))
