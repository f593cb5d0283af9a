"""The HTTP server over a real socket, on a scripted engine (tests/serve_helpers.py): the OpenAI wire
format with the official `openai` client, every kind of bad request and its status, auth, media sources,
the queue limit (429), aborts on disconnect, errors inside a stream, metrics, and SIGTERM.

The engine is a fake with the continuous-batching interface, so queueing and aborts happen on purpose;
tests/test_serve_model.py runs the same server on the real engine and model.
"""

from __future__ import annotations

import base64
import dataclasses
import http.server
import io
import json
import os
import re
import signal
import socket
import subprocess
import sys
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import openai
import pytest
from PIL import Image

from owl3.serving.app import create_app
from owl3.serving.chat import ServeConfig
from owl3.serving.media import MediaPolicy
from owl3.serving.prepare import Limits
from tests.serve_helpers import (
    FakeEngine,
    ServerThread,
    data_url,
    image_part,
    png_bytes,
    request,
    sse_payloads,
    write_video,
)

KEY = "test-key-123"
MODEL = "owl3-test"
AUTH = {"Authorization": f"Bearer {KEY}"}


@pytest.fixture(scope="module")
def media_dir(tmp_path_factory):
    root = tmp_path_factory.mktemp("media")
    allowed = root / "allowed"
    allowed.mkdir()
    Image.new("RGB", (40, 30), (200, 30, 30)).save(allowed / "red.png")
    Image.new("RGB", (40, 30), (30, 30, 200)).save(root / "outside.png")
    (allowed / "escape.png").symlink_to(root / "outside.png")
    write_video(allowed / "clip.mp4", n_frames=12)
    return allowed


@pytest.fixture(scope="module")
def media_server(media_dir):
    """A plain HTTP server of the media folder on 127.0.0.1 (the "remote" host)."""

    class Handler(http.server.SimpleHTTPRequestHandler):
        def __init__(self, *a, **kw):
            super().__init__(*a, directory=str(media_dir), **kw)

        def log_message(self, *a):
            pass

    httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    threading.Thread(target=httpd.serve_forever, daemon=True).start()
    yield f"http://127.0.0.1:{httpd.server_address[1]}"
    httpd.shutdown()


@pytest.fixture(scope="module")
def served(demo_pipe, media_dir):
    engine = FakeEngine(demo_pipe.tokenizer, demo_pipe.processor.stop_token_ids, max_num_seqs=4)
    config = ServeConfig(
        model_name=MODEL,
        api_key=KEY,
        limits=Limits(max_images=3, max_frames=6),
        media=MediaPolicy(
            local_root=media_dir,
            allow_remote=True,
            allow_private_hosts=True,
            max_bytes=1 << 20,
            max_image_pixels=1_000_000,
        ),
        max_queue=12,
        max_body_bytes=2 << 20,
    )
    app = create_app(demo_pipe, engine, config)
    with ServerThread(app) as server:
        server.engine = engine
        server.service = app.state.service
        yield server


@pytest.fixture(scope="module")
def client(served):
    return openai.OpenAI(base_url=served.url + "/v1", api_key=KEY, max_retries=0, timeout=30)


def ask(client, content, **kw):
    return client.chat.completions.create(model=MODEL, messages=[{"role": "user", "content": content}], **kw)


def metric(served, name: str) -> float:
    _, _, body = request(served.url, "GET", "/metrics")
    values = re.findall(rf"^{name}(?:{{[^}}]*}})? ([0-9.e+-]+)$", body.decode(), flags=re.M)
    return sum(float(v) for v in values)


def chat(served, body, headers=AUTH):
    return request(served.url, "POST", "/v1/chat/completions", body, headers)


# ------------------------------------------------------------------------------------------ answers
def test_plain_and_streamed_answers_in_openai_format(served, client, demo_pipe):
    expected = "You said: Hello owl (0 views)"
    r = ask(client, "Hello owl", max_tokens=64)
    assert r.object == "chat.completion" and r.model == MODEL
    assert r.choices[0].message.content == expected and r.choices[0].finish_reason == "stop"
    prompt = len(demo_pipe.encode([{"role": "user", "content": "Hello owl"}]).input_ids)
    answer_ids = demo_pipe.tokenizer.encode(expected, add_special_tokens=False).ids
    assert r.usage.prompt_tokens == prompt
    assert r.usage.completion_tokens == len(answer_ids) + 1  # the stop token counts
    assert r.usage.total_tokens == prompt + len(answer_ids) + 1

    chunks = list(ask(client, "Hello owl", stream=True, stream_options={"include_usage": True}))
    assert chunks[0].choices[0].delta.role == "assistant"
    assert "".join(c.choices[0].delta.content or "" for c in chunks if c.choices) == expected
    assert [c.choices[0].finish_reason for c in chunks if c.choices][-1] == "stop"
    assert chunks[-1].choices == [] and chunks[-1].usage.completion_tokens == r.usage.completion_tokens
    assert all(c.object == "chat.completion.chunk" and c.id == chunks[0].id for c in chunks)

    status, headers, raw = chat(served, {"messages": [{"role": "user", "content": "Hi"}], "stream": True})
    assert status == 200 and headers["content-type"].startswith("text/event-stream")
    assert raw.endswith(b"data: [DONE]\n\n") and sse_payloads(raw)[-1] == "[DONE]"


def test_max_tokens_and_stop_strings(client, demo_pipe):
    r = ask(client, "Hello there", max_tokens=3)
    ids = demo_pipe.tokenizer.encode("You said: Hello there (0 views)", add_special_tokens=False).ids
    assert r.choices[0].finish_reason == "length" and r.usage.completion_tokens == 3
    assert r.choices[0].message.content == demo_pipe.tokenizer.decode(ids[:3])
    r = ask(client, "Hello there", max_completion_tokens=2)
    assert r.usage.completion_tokens == 2

    for stop, text in (
        (["there"], "You said: Hello "),
        ("said: Hel", "You "),
        (["zzz", "(0"], "You said: Hello there "),
    ):
        r = ask(client, "Hello there", stop=stop)
        assert (r.choices[0].message.content, r.choices[0].finish_reason) == (text, "stop")
        chunks = list(ask(client, "Hello there", stop=stop, stream=True))
        assert "".join(c.choices[0].delta.content or "" for c in chunks) == text
        assert chunks[-1].choices[0].finish_reason == "stop"


def test_conversation_with_system_and_assistant_turns(client):
    messages = [
        {"role": "system", "content": "Be brief."},
        {"role": "user", "content": "first"},
        {"role": "assistant", "content": "You said: first"},
        {"role": "user", "content": [{"type": "text", "text": "second"}]},
    ]
    r = client.chat.completions.create(model=MODEL, messages=messages)
    assert r.choices[0].message.content == "You said: second (0 views)"


def test_models_health_metrics_and_the_page_are_served(served, client):
    assert [m.id for m in client.models.list().data] == [MODEL]
    assert request(served.url, "GET", "/health")[:1] == (200,)
    status, headers, body = request(served.url, "GET", "/metrics")  # open without the key
    assert status == 200 and headers["content-type"].startswith("text/plain")
    names = [
        "time_to_first_token_seconds",
        "inter_token_latency_seconds",
        "e2e_request_latency_seconds",
        "num_requests_running",
        "num_requests_waiting",
        "prompt_tokens_total",
        "generation_tokens_total",
        "images_total",
        "media_cache_hits_total",
        "requests_aborted_total",
    ]
    for name in names:
        assert f"owl3_{name}" in body.decode()
    status, headers, body = request(served.url, "GET", "/")
    assert status == 200 and headers["content-type"].startswith("text/html") and b"/static/chat.js" in body
    assert request(served.url, "GET", "/static/chat.js")[0] == 200


def test_api_key_is_required_on_v1(served):
    for headers in ({}, {"Authorization": "Bearer wrong"}, {"Authorization": KEY}):
        status, _, body = request(served.url, "GET", "/v1/models", headers=headers)
        assert status == 401 and json.loads(body)["error"]["code"] == "invalid_api_key"
        status, _, _ = chat(served, {"messages": [{"role": "user", "content": "Hi"}]}, headers=headers)
        assert status == 401
    with pytest.raises(openai.AuthenticationError):
        openai.OpenAI(base_url=served.url + "/v1", api_key="nope", max_retries=0).models.list()


# ------------------------------------------------------------------------------------------ media
def test_images_and_video_from_data_file_and_http_urls(served, client, media_dir, media_server):
    red = Image.open(media_dir / "red.png")
    sources = [
        data_url(png_bytes(red)),
        (media_dir / "red.png").as_uri(),
        f"{media_server}/red.png",
    ]
    answers = set()
    for url in sources:
        r = ask(
            client, [{"type": "image_url", "image_url": {"url": url}}, {"type": "text", "text": "Which?"}]
        )
        answers.add(r.choices[0].message.content)
        assert r.usage.images == 1
    assert len(answers) == 1 and answers.pop().startswith("You said: Which?")

    video = (media_dir / "clip.mp4").read_bytes()
    for options, frames in (({"num_frames": 100}, 6), ({"num_frames": 2}, 2), ({"fps": 1.0}, 3), (None, 6)):
        extra = {"media_io_kwargs": {"video": options}} if options else {}
        content = [
            image_part(red),
            {"type": "video_url", "video_url": {"url": data_url(video, "video/mp4")}},
            {"type": "text", "text": "What happens?"},
        ]
        r = ask(client, content, extra_body=extra)
        assert (r.usage.images, r.usage.video_frames) == (1, frames), options  # 100 clamped to 6
        assert r.choices[0].message.content == f"You said: What happens? ({1 + frames} views)"


def test_a_repeated_image_is_counted_as_a_media_cache_hit(served, client):
    before = metric(served, "owl3_media_cache_hits_total")
    img = Image.new("RGB", (20, 20), (1, 2, 3))
    for _ in range(2):
        ask(client, [image_part(img), {"type": "text", "text": "again"}])
    assert metric(served, "owl3_media_cache_hits_total") > before


def test_remote_media_follows_the_policy(served, client, media_server):
    url = f"{media_server}/red.png"
    service, config = served.service, served.service.config
    try:
        for media, code in (
            (dataclasses.replace(config.media, allow_remote=False), "media_url_not_allowed"),
            (dataclasses.replace(config.media, allow_private_hosts=False), "media_host_not_allowed"),
        ):
            service.config = dataclasses.replace(config, media=media)
            content = [{"type": "image_url", "image_url": {"url": url}}, {"type": "text", "text": "x"}]
            status, _, body = chat(served, {"messages": [{"role": "user", "content": content}]})
            err = json.loads(body)["error"]
            assert (status, err["code"], err["param"]) == (400, code, "messages[0].content[0]")
    finally:
        service.config = config
    assert ask(client, "still here").choices[0].message.content.startswith("You said")


# ------------------------------------------------------------------------------------------ errors
def _user(content):
    return {"messages": [{"role": "user", "content": content}]}


def _image_url(url):
    return _user([{"type": "image_url", "image_url": {"url": url}}, {"type": "text", "text": "x"}])


SECRET = base64.b64encode(b"\x89PNG this is not really a png" * 8).decode()
BIG = io.BytesIO()
Image.new("RGB", (1001, 1000)).save(BIG, format="PNG")
BAD = [  # (id, body, status, code)
    ("malformed-json", b'{"messages": [', 400, "invalid_json"),
    ("not-an-object", b"[1, 2]", 400, "invalid_json"),
    ("messages-a-string", {"messages": "hello"}, 400, "invalid_request"),
    ("messages-empty", {"messages": []}, 400, "invalid_request"),
    ("max-tokens-a-string", {**_user("hi"), "max_tokens": "many"}, 400, "invalid_request"),
    ("max-tokens-zero", {**_user("hi"), "max_tokens": 0}, 400, "invalid_request"),
    ("unknown-role", {"messages": [{"role": "robot", "content": "hi"}]}, 400, "invalid_request"),
    ("unknown-part", _user([{"type": "input_audio", "input_audio": {}}]), 400, "invalid_request"),
    ("n-2", {**_user("hi"), "n": 2}, 400, "invalid_request"),
    ("temperature-negative", {**_user("hi"), "temperature": -1}, 400, "invalid_request"),
    ("top-p-zero", {**_user("hi"), "top_p": 0}, 400, "invalid_request"),
    ("empty-stop", {**_user("hi"), "stop": [""]}, 400, "invalid_request"),
    ("seed-over-int64", {**_user("hi"), "seed": 2**70}, 400, "invalid_request"),
    ("logprobs", {**_user("hi"), "logprobs": True}, 400, "unsupported_parameter"),
    ("unknown-attribution", {**_user("hi"), "attribution": "saliency"}, 400, "invalid_request"),
    ("placeholder-in-text", _user("look: <|image|>"), 400, "invalid_request"),
    ("bad-base64", _image_url("data:image/png;base64,@@@" + SECRET), 400, "invalid_base64"),
    ("data-url-not-base64", _image_url("data:image/png," + SECRET), 400, "invalid_base64"),
    ("undecodable-image", _image_url("data:image/png;base64," + SECRET), 400, "invalid_image"),
    ("image-over-pixel-cap", _image_url(data_url(BIG.getvalue())), 400, "image_too_large"),
    (
        "undecodable-video",
        _user([{"type": "video_url", "video_url": {"url": "data:video/mp4;base64," + SECRET}}]),
        400,
        "invalid_video",
    ),
    ("too-many-images", _user([image_part(Image.new("RGB", (8, 8)))] * 4), 400, "too_many_images"),
    (
        "too-many-frames",
        {
            **_user([{"type": "video_url", "video_url": {"url": "data:video/mp4;base64,AAAA"}}] * 2),
            "media_io_kwargs": {"video": {"num_frames": 4}},
        },
        400,
        "too_many_frames",
    ),
    ("prompt-over-context", _user("word " * 700), 400, "context_length_exceeded"),
    ("max-tokens-over-context", {**_user("hi"), "max_tokens": 10_000}, 400, "context_length_exceeded"),
    ("ftp-url", _image_url("ftp://example.com/a.png"), 400, "invalid_media_url"),
    ("unknown-model", {**_user("hi"), "model": "gpt-4o"}, 404, "model_not_found"),
]


@pytest.mark.parametrize("body,status,code", [b[1:] for b in BAD], ids=[b[0] for b in BAD])
def test_bad_requests_get_their_status_and_the_server_goes_on(served, client, body, status, code):
    got, headers, raw = chat(served, body)
    err = json.loads(raw)["error"]
    assert (got, err["code"]) == (status, code), err
    assert set(err) == {"message", "type", "param", "code"} and err["type"] == "invalid_request_error"
    assert SECRET[:40] not in err["message"] and len(err["message"]) < 400
    assert ask(client, "after").choices[0].message.content == "You said: after (0 views)"


def test_local_files_stay_inside_the_allowed_folder(served, media_dir):
    for url in (
        (media_dir / "escape.png").as_uri(),  # a symlink to a file outside
        f"file://{media_dir}/../outside.png",  # '..'
        f"file://{media_dir}/missing.png",
        "file:///etc/passwd",
        f"file://otherhost{media_dir}/red.png",
    ):
        status, _, raw = chat(served, _image_url(url))
        assert status == 400 and json.loads(raw)["error"]["code"] in (
            "media_url_not_allowed",
            "invalid_media_url",
        )


def test_a_body_over_the_limit_is_413(served, client):
    body = json.dumps(_image_url("data:image/png;base64," + "A" * (3 << 20))).encode()
    status, _, raw = chat(served, body, headers={**AUTH, "Content-Type": "application/json"})
    assert status == 413 and json.loads(raw)["error"]["code"] == "request_too_large"
    assert ask(client, "after").choices[0].message.content.startswith("You said")


def test_an_engine_failure_inside_a_stream_is_an_error_event_then_done(served, client):
    status, _, raw = chat(served, {**_user("EXPLODE now"), "stream": True})
    payloads = sse_payloads(raw)
    assert status == 200 and payloads[-1] == "[DONE]"
    err = json.loads(payloads[-2])["error"]
    assert err["type"] == "server_error" and set(err) == {"message", "type", "param", "code"}
    status, _, raw = chat(served, _user("EXPLODE again"))
    assert status == 500 and json.loads(raw)["error"]["type"] == "server_error"
    assert ask(client, "after").choices[0].message.content.startswith("You said")


# ------------------------------------------------------------------------------------------ load
def test_a_full_queue_answers_429_with_retry_after(served, client):
    service, config, engine = served.service, served.service.config, served.engine
    service.config = dataclasses.replace(config, max_queue=1)  # capacity: 4 running + 1 waiting
    engine.paused.set()
    try:
        with ThreadPoolExecutor(5) as pool:
            futures = [pool.submit(lambda i=i: ask(client, f"queued {i}")) for i in range(5)]
            deadline = time.monotonic() + 20
            while service.in_flight < 5 and time.monotonic() < deadline:
                time.sleep(0.01)
            assert service.in_flight == 5
            status, headers, raw = chat(served, _user("one too many"))
            assert status == 429 and headers["retry-after"] == "1"
            assert json.loads(raw)["error"]["code"] == "queue_full"
            with pytest.raises(openai.RateLimitError):
                ask(client, "one too many")
            engine.paused.clear()
            answers = [f.result(timeout=20).choices[0].message.content for f in futures]
    finally:
        engine.paused.clear()
        service.config = config
    assert answers == [f"You said: queued {i} (0 views)" for i in range(5)]


def test_16_concurrent_streams_get_their_sequential_answers(client):
    prompts = [f"question number {i}" + " and more" * (i % 3) for i in range(16)]

    def stream(p):
        return "".join(c.choices[0].delta.content or "" for c in ask(client, p, stream=True, max_tokens=40))

    sequential = [stream(p) for p in prompts]
    with ThreadPoolExecutor(16) as pool:
        assert list(pool.map(stream, prompts)) == sequential


def _wait_for(predicate, timeout=10.0):
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            return False
        time.sleep(0.02)
    return True


def test_a_client_that_goes_away_frees_its_slot(served):
    engine = served.engine
    engine.step_delay = 0.01
    try:
        for stream in (True, False):
            aborted = metric(served, "owl3_requests_aborted_total")
            n_aborted = len(engine.aborted)
            sock = socket.create_connection(("127.0.0.1", served.port))
            body = json.dumps({**_user("LONG please"), "stream": stream, "max_tokens": 500}).encode()
            sock.sendall(
                b"POST /v1/chat/completions HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
                + f"Authorization: Bearer {KEY}\r\nContent-Length: {len(body)}\r\n\r\n".encode()
                + body
            )
            if stream:  # read a few events, then hang up
                received = b""
                while received.count(b"data: ") < 3:
                    received += sock.recv(4096)
            else:
                assert _wait_for(lambda: engine.num_running == 1)
            sock.close()
            assert _wait_for(lambda n=aborted: metric(served, "owl3_requests_aborted_total") == n + 1)
            assert _wait_for(lambda: metric(served, "owl3_num_requests_running") == 0)
            assert len(engine.aborted) == n_aborted + 1 and not engine.has_unfinished
    finally:
        engine.step_delay = 0.0


def test_sigterm_drains_and_exits_0():
    code = "from tests.serve_helpers import serve_fake_main; serve_fake_main(2.0)"
    root = Path(__file__).resolve().parents[1]
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(root), os.environ.get("PYTHONPATH", "")])}
    proc = subprocess.Popen(
        [sys.executable, "-c", code], cwd=root, env=env, stdout=subprocess.PIPE, text=True
    )
    try:
        port = int(proc.stdout.readline())
        url = f"http://127.0.0.1:{port}"
        assert _wait_for(lambda: _health(url) == 200, timeout=30)
        conn = socket.create_connection(("127.0.0.1", port))
        body = json.dumps({**_user("LONG story"), "stream": True}).encode()
        conn.sendall(
            b"POST /v1/chat/completions HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
            + f"Content-Length: {len(body)}\r\n\r\n".encode()
            + body
        )
        received = conn.recv(4096)
        t0 = time.monotonic()
        proc.send_signal(signal.SIGTERM)
        conn.settimeout(10)
        while b"[DONE]" not in received:
            block = conn.recv(65536)
            if not block:
                break
            received += block
        conn.close()
        assert proc.wait(timeout=15) == 0
        assert time.monotonic() - t0 < 6
        events = [json.loads(p) for p in sse_payloads(received.split(b"\r\n\r\n", 1)[1]) if p.startswith("{")]
        assert b"[DONE]" in received and events[-1]["choices"][0]["finish_reason"] == "abort"
        assert _health(url) is None  # nothing listens any more
    finally:
        if proc.poll() is None:
            proc.kill()


def _health(url):
    try:
        return request(url, "GET", "/health", timeout=2)[0]
    except OSError:
        return None


def test_a_worker_that_fails_answers_its_clients_instead_of_leaving_them_waiting(demo_pipe):
    import asyncio

    from owl3.serving.protocol import APIError
    from owl3.serving.worker import Handle, Worker

    class Broken(FakeEngine):
        @property
        def num_waiting(self):  # read by the worker after every step
            raise RuntimeError("a bug")

    async def main():
        loop = asyncio.get_running_loop()
        worker = Worker(Broken(demo_pipe.tokenizer, demo_pipe.processor.stop_token_ids), lambda *a: None)
        worker.start(loop)
        enc = demo_pipe.encode([{"role": "user", "content": "hi"}])
        first = Handle(enc, demo_pipe.sampling(max_new_tokens=5), loop)
        worker.submit(first)
        await asyncio.wait_for(first.accepted, 5)
        items = [await asyncio.wait_for(first.events.get(), 5) for _ in range(2)]
        assert isinstance(items[-1], APIError) and items[-1].status == 500
        await loop.run_in_executor(None, worker._thread.join, 5)
        second = Handle(enc, demo_pipe.sampling(max_new_tokens=5), loop)
        worker.submit(second)
        with pytest.raises(APIError) as e:
            await asyncio.wait_for(second.accepted, 5)
        assert e.value.status == 503

    asyncio.run(main())
