"""The server on the real engine and the built-in model, against the Python API: the same greedy (and
seeded) answers plain and streamed, several images and a video in one message, 16 concurrent streaming
clients each getting the answer it gets alone, the media cache on a resent image, and `owl3 serve` itself
(start, answer, SIGTERM, exit 0).

The Python API (`ref`) and the server each load their own copy of the model: the engine belongs to the
server's worker thread, and the test thread must not use it.
"""

from __future__ import annotations

import json
import os
import random
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

import owl3
from owl3.serving.app import create_app
from owl3.serving.chat import ServeConfig
from owl3.serving.command import DEFAULT_NAME, make_engine
from owl3.serving.prepare import Limits
from tests.serve_helpers import ServerThread, data_url, image_part, request, write_video

NEW = 10  # max tokens of every answer: short, the model is tiny and the machine small


@pytest.fixture(scope="module")
def ref():
    return owl3.load()


@pytest.fixture(scope="module")
def served():
    pipe = owl3.load()
    engine = make_engine(pipe, 16)
    config = ServeConfig(model_name=DEFAULT_NAME, limits=Limits(max_images=8, max_frames=8))
    app = create_app(pipe, engine, config)
    with ServerThread(app) as server:
        yield server


@pytest.fixture(scope="module")
def client(served):
    return openai.OpenAI(base_url=served.url + "/v1", api_key="unused", max_retries=0, timeout=120)


@pytest.fixture(scope="module")
def scenes():
    from owl3.demo.world import random_scene, render

    rng = random.Random(0)
    return [render(random_scene(rng)) for _ in range(6)]


def ask(client, content, **kw):
    messages = (
        content
        if isinstance(content, list) and "role" in content[0]
        else [{"role": "user", "content": content}]
    )
    return client.chat.completions.create(model=DEFAULT_NAME, messages=messages, max_tokens=NEW, **kw)


def streamed(client, content, **kw) -> tuple[str, str]:
    chunks = list(ask(client, content, stream=True, **kw))
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    return text, [c.choices[0].finish_reason for c in chunks if c.choices][-1]


def test_plain_and_streamed_answers_equal_the_python_api(client, ref, scenes):
    for content, images, prompt in (
        ("How many objects are there?", [], "How many objects are there?"),
        (
            [image_part(scenes[0]), {"type": "text", "text": "What is in the picture?"}],
            [scenes[0]],
            "What is in the picture?",
        ),
    ):
        want = ref.generate(prompt, images=images, max_new_tokens=NEW)
        r = ask(client, content)
        got = r.choices[0]
        assert (got.message.content, got.finish_reason) == (want.text, want.finish_reason)
        assert r.usage.prompt_tokens == want.prompt_tokens
        assert r.usage.completion_tokens == len(want.token_ids) and r.usage.images == len(images)
        assert streamed(client, content) == (want.text, want.finish_reason)


def test_a_conversation_equals_the_python_api(client, ref, scenes):
    messages = [
        {"role": "system", "content": "Answer briefly."},
        {
            "role": "user",
            "content": [image_part(scenes[1]), {"type": "text", "text": "What colour is the circle?"}],
        },
        {"role": "assistant", "content": "The circle is red."},
        {"role": "user", "content": "And the square?"},
    ]
    plain = [
        {"role": "system", "content": "Answer briefly."},
        {"role": "user", "content": "<|image|>\nWhat colour is the circle?"},
        {"role": "assistant", "content": "The circle is red."},
        {"role": "user", "content": "And the square?"},
    ]
    assert ask(client, messages).choices[0].message.content == ref.chat(
        plain, [scenes[1]], max_new_tokens=NEW
    )


def test_several_images_and_a_video_in_one_message(client, ref, scenes, tmp_path):
    video = tmp_path / "clip.mp4"
    write_video(video, n_frames=12, size=84)
    content = [
        {"type": "text", "text": "Image 1:"},
        image_part(scenes[2]),
        {"type": "text", "text": "Image 2:"},
        image_part(scenes[3]),
        {"type": "video_url", "video_url": {"url": data_url(video.read_bytes(), "video/mp4")}},
        {"type": "text", "text": "What moves in the video?"},
    ]
    prompt = "Image 1:\n<|image|>\nImage 2:\n<|image|>\n<|video|>\nWhat moves in the video?"
    want = ref.chat(prompt, images=scenes[2:4], videos=[video], frames=4, max_new_tokens=NEW)
    r = ask(client, content, extra_body={"media_io_kwargs": {"video": {"num_frames": 4}}})
    assert r.choices[0].message.content == want
    assert (r.usage.images, r.usage.video_frames) == (2, 4)


@pytest.mark.parametrize("measure", ["attention", "gradient"])
def test_attribution_returns_the_python_apis_shares(client, ref, scenes, measure):
    content = [
        {"type": "text", "text": "Image 1:"},
        image_part(scenes[2]),
        {"type": "text", "text": "Image 2:"},
        image_part(scenes[3]),
        {"type": "text", "text": "In Image 2, what colour is the square?"},
    ]
    prompt = "Image 1:\n<|image|>\nImage 2:\n<|image|>\nIn Image 2, what colour is the square?"
    want = ref.generate(prompt, images=scenes[2:4], attribution=measure, max_new_tokens=NEW)
    body = {"attribution": measure if measure == "gradient" else True}
    r = ask(client, content, extra_body=body)
    got = r.model_extra["shares"]
    assert [s["label"] for s in got] == ["image 1", "image 2"]
    assert [s["share"] for s in got] == pytest.approx([s.share for s in want.shares], abs=1e-4)
    assert "citations" not in r.model_extra and r.choices[0].message.content == want.text
    chunks = list(ask(client, content, stream=True, extra_body=body))
    tail = [c.model_extra["shares"] for c in chunks if not c.choices]
    assert [s["share"] for s in tail[-1]] == pytest.approx([s.share for s in want.shares], abs=1e-4)
    assert "shares" not in (ask(client, content).model_extra or {})  # only when asked


def test_seeded_sampling_equals_the_python_api(client, ref, scenes):
    content = [image_part(scenes[4]), {"type": "text", "text": "Describe the picture."}]
    want = ref.chat(
        "Describe the picture.", images=[scenes[4]], max_new_tokens=NEW, temperature=0.9, top_p=0.9, seed=7
    )
    got = ask(client, content, temperature=0.9, top_p=0.9, seed=7).choices[0].message.content
    assert got == want


def test_16_concurrent_streaming_clients_get_their_sequential_answers(served, client, ref, scenes):
    questions = [
        "How many objects are there?",
        "What is in the picture?",
        "Is there a red shape?",
        "Where is the circle?",
    ]
    cases = [(scenes[i % 6] if i % 3 != 2 else None, questions[i % 4] + " " * (i // 4)) for i in range(16)]
    sequential = [ref.chat(q, images=[] if img is None else [img], max_new_tokens=NEW) for img, q in cases]

    def one(case):
        img, q = case
        return streamed(client, q if img is None else [image_part(img), {"type": "text", "text": q}])[0]

    peak, done = [0], threading.Event()

    def watch():  # the server batches: more than one request runs at once
        while not done.is_set():
            peak[0] = max(peak[0], _metric(served, "owl3_num_requests_running"))
            time.sleep(0.02)

    watcher = threading.Thread(target=watch)
    watcher.start()
    try:
        with ThreadPoolExecutor(16) as pool:
            concurrent = list(pool.map(one, cases))
    finally:
        done.set()
        watcher.join()
    assert concurrent == sequential
    assert peak[0] > 1


def test_a_resent_image_comes_from_the_media_cache(served, client, scenes):
    before = _metric(served, "owl3_media_cache_hits_total")
    for question in ("What is in the picture?", "How many objects are there?"):
        ask(client, [image_part(scenes[5]), {"type": "text", "text": question}])
    assert _metric(served, "owl3_media_cache_hits_total") > before


def test_the_next_turn_of_a_conversation_reuses_its_prefix(served, client, scenes):
    turn1 = [{"role": "user", "content": [image_part(scenes[4]), {"type": "text", "text": "What is it?"}]}]
    answer = client.chat.completions.create(model=DEFAULT_NAME, messages=turn1, max_tokens=NEW)
    turn2 = [*turn1, {"role": "assistant", "content": answer.choices[0].message.content},
             {"role": "user", "content": "And its colour?"}]  # fmt: skip
    before = _metric(served, "owl3_prefix_cache_tokens_reused_total")
    second = client.chat.completions.create(model=DEFAULT_NAME, messages=turn2, max_tokens=NEW)
    assert _metric(served, "owl3_prefix_cache_tokens_reused_total") - before >= answer.usage.prompt_tokens
    assert second.usage.prompt_tokens > answer.usage.prompt_tokens


def test_owl3_serve_starts_answers_and_stops_on_sigterm():
    # --port 0: the server listens on a free port and prints its address
    root = Path(__file__).resolve().parents[1]
    cmd = [sys.executable, "-m", "owl3.cli", "serve", "--port", "0", "--max-num-seqs", "2", "--api-key", "k",
           "--shutdown-timeout", "3"]  # fmt: skip
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(root), os.environ.get("PYTHONPATH", "")])}
    proc = subprocess.Popen(
        cmd, cwd=root, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True
    )
    try:
        printed = []
        while not printed or not printed[-1].startswith("owl3 serve:"):
            printed.append(proc.stdout.readline())
            assert printed[-1], "".join(printed)  # the process ended before it said where it listens
        url = re.search(r"at (http://127\.0\.0\.1:\d+)/v1", printed[-1])[1]
        assert not url.endswith(":0")
        deadline = time.monotonic() + 60
        while _health(url) != 200:
            assert proc.poll() is None and time.monotonic() < deadline, proc.stdout.read()
            time.sleep(0.1)
        body = {"model": DEFAULT_NAME, "messages": [{"role": "user", "content": "Hi"}], "max_tokens": 4}
        status, _, raw = request(url, "POST", "/v1/chat/completions", body, {"Authorization": "Bearer k"})
        assert status == 200 and json.loads(raw)["usage"]["completion_tokens"] <= 4
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=20) == 0
    finally:
        if proc.poll() is None:
            proc.kill()


def test_a_taken_port_or_a_bad_address_is_one_line_before_the_model_loads(capsys):
    from owl3 import cli

    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        # the model would take seconds to load; the port is checked first, so a wrong --model is not reached
        assert cli.main(["serve", "--port", str(port), "--model", "/no/such/model"]) == 2
        err = capsys.readouterr().err
        assert err.count("\n") == 1 and f"127.0.0.1:{port}" in err and "in use" in err
    assert cli.main(["serve", "--port", "70000"]) == 2
    assert "--port must be between 0" in capsys.readouterr().err
    assert cli.main(["serve", "--host", "no-such-host.invalid", "--model", "/no/such/model"]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "unknown address" in err


def _metric(served, name: str) -> float:
    _, _, body = request(served.url, "GET", "/metrics")
    return sum(
        float(v) for v in re.findall(rf"^{name}(?:{{[^}}]*}})? ([0-9.e+-]+)$", body.decode(), flags=re.M)
    )


def _health(url):
    try:
        return request(url, "GET", "/health", timeout=2)[0]
    except OSError:
        return None
