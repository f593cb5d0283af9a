"""`owl3 eval TASK --server URL`: against a small OpenAI-compatible stub written here (http.server in a
thread), which reads the images and videos it is sent and answers from them, so the scores must come from
its answers; and against the real `owl3 serve` on the tiny model."""

from __future__ import annotations

import base64
import io
import json
import re
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest
from PIL import Image

from owl3.cli import main
from owl3.evaluation.records import read_results
from tests.eval_helpers import COLOURS, RGB, frame_number, mmbench_rows, write_tsv, write_video

NAMES = {v: k for k, v in RGB.items()}


def _decode(url: str) -> bytes:
    head, _, payload = url.partition(",")
    assert head.endswith(";base64")
    return base64.b64decode(payload)


class Stub(BaseHTTPRequestHandler):
    """/v1/models and /v1/chat/completions. Image questions: the letter of the option naming the colour of
    the image the prompt points at ("In Image X", else the only image), except for square number 3, which
    it gets wrong on purpose. Video questions: the letter at position (number of frames received - 1)."""

    state: dict = {}

    def log_message(self, *a):
        pass

    def _send(self, code: int, body: dict) -> None:
        data = json.dumps(body).encode()
        self.send_response(code)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def do_GET(self):
        if self.headers.get("Authorization") != "Bearer sesame":
            return self._send(401, {"error": {"message": "bad key"}})
        self._send(200, {"object": "list", "data": [{"id": "stub-model", "object": "model"}]})

    def do_POST(self):
        s = self.state
        req = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
        with s["lock"]:
            s["in_flight"] += 1
            s["max_in_flight"] = max(s["max_in_flight"], s["in_flight"])
            s["requests"].append(req)
        try:
            time.sleep(0.05)  # a server that takes a while: concurrent requests overlap
            text, colours, frames = [], [], None
            for part in req["messages"][0]["content"]:
                if part["type"] == "text":
                    text.append(part["text"])
                elif part["type"] == "image_url":
                    img = Image.open(io.BytesIO(_decode(part["image_url"]["url"]))).convert("RGB")
                    colours.append(NAMES[img.getpixel((2, 2))])
                else:
                    import av

                    with av.open(io.BytesIO(_decode(part["video_url"]["url"]))) as c:
                        frames = [frame_number(f.to_image()) for f in c.decode(video=0)]
            prompt = "\n".join(text)
            letters = re.findall(r"(?m)^(?:Options: )?([A-J])\. (.+)$", prompt)
            if frames is not None:
                assert req["media_io_kwargs"]["video"]["num_frames"] == len(frames)
                s["frames"].append(frames)
                answer = letters[len(frames) - 1][0]
            else:
                x = re.search(r"In Image (\d+)", prompt)
                colour = colours[int(x.group(1)) - 1] if x else colours[0]
                n = int(re.search(r"square number (\d+)", prompt).group(1))
                answer = next((k for k, v in letters if v == colour), "Z") if n != 3 else "Z"
                answer = f"The answer is {answer}."
            self._send(200, {"id": "x", "object": "chat.completion", "created": 0, "model": req["model"],
                             "choices": [{"index": 0, "finish_reason": "stop",
                                          "message": {"role": "assistant", "content": answer}}]})  # fmt: skip
        finally:
            with s["lock"]:
                s["in_flight"] -= 1


@pytest.fixture()
def stub():
    Stub.state = {"lock": threading.Lock(), "in_flight": 0, "max_in_flight": 0, "requests": [], "frames": []}
    server = ThreadingHTTPServer(("127.0.0.1", 0), Stub)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{server.server_address[1]}/v1", Stub.state
    server.shutdown()
    thread.join(5)


@pytest.fixture(scope="module")
def tsv(tmp_path_factory):
    return write_tsv(tmp_path_factory.mktemp("srv") / "MMBench_DEV_EN.tsv", mmbench_rows(6))


def test_mmbench_scores_come_from_the_servers_answers(stub, tsv, tmp_path, capsys):
    url, state = stub
    out = tmp_path / "S.jsonl"
    args = ["eval", "mmbench", "--data", str(tsv), "--server", url, "--api-key", "sesame",
            "--concurrency", "4", "--output", str(out), "--json"]  # fmt: skip
    assert main(args) == 0
    final = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert final["model"] == f"stub-model @ {url}"  # the first model the server lists
    assert final["questions"] == 6 and final["prompts"] == 18 and final["accuracy"] == round(5 / 6, 4)
    assert final["extraction"] == {"answer phrase": 16, "none": 2}  # square 3 has 2 options: 2 rotations
    assert state["max_in_flight"] > 1 and len(state["requests"]) == 18
    req = state["requests"][0]
    assert req["temperature"] == 0.0 and req["model"] == "stub-model"
    kinds = [p["type"] for p in req["messages"][0]["content"]]
    assert kinds == ["image_url", "text"]  # the image where its placeholder stands
    records = read_results(out)[1]
    assert len(records) == 18 and {r["prediction"] for r in records if r["question"] == "3"} == {
        "The answer is Z."
    }


def test_distractor_over_a_server_keeps_image_order(stub, tsv, tmp_path, capsys):
    url, state = stub
    args = ["eval", "distractor", "--data", str(tsv), "--server", url, "--api-key", "sesame",
            "--served-model", "stub-model", "--images", "1,4", "--variants", "2", "--json"]  # fmt: skip
    assert main(args) == 0
    final = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    # right everywhere (the stub looks at Image X) except square number 3
    assert [(r["images"], r["accuracy"]) for r in final["results"]] == [
        (1, round(5 / 6, 4)),
        (4, round(5 / 6, 4)),
    ]
    four = [
        r
        for r in state["requests"]
        if sum(p["type"] == "image_url" for p in r["messages"][0]["content"]) == 4
    ]
    assert len(four) == 12
    parts = four[0]["messages"][0]["content"]
    assert [p.get("text") for p in parts[:2]] == ["Image 1:", None] and parts[-1]["text"].startswith(
        ". In Image"
    )


def test_video_goes_as_a_video_url_of_exactly_the_sampled_frames(stub, tmp_path, capsys):
    url, state = stub
    write_video(tmp_path / "videos" / "x1.mp4")
    entry = {"id": "v1", "video_path": "x1.mp4", "duration": 3.0, "question": "Which?",
             "candidates": ["one", "two", "three", "four"], "correct_choice": 2}  # fmt: skip
    (tmp_path / "lvb_val.json").write_text(json.dumps([entry]))
    args = ["eval", "longvideobench", "--data", str(tmp_path), "--server", url, "--api-key", "sesame",
            "--frames", "3", "--json"]  # fmt: skip
    assert main(args) == 0
    final = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert state["frames"] == [[4, 12, 20]]  # the middles of 3 segments of 24 frames, sent losslessly
    assert final["accuracy"] == 1.0  # the stub answered C because it received 3 frames


def test_server_errors_are_one_line(stub, tsv, capsys):
    url, _ = stub
    for args in (["--server", url, "--api-key", "wrong"], ["--server", "http://127.0.0.1:9/v1"],
                 ["--server", url, "--model", "x"]):  # fmt: skip
        assert main(["eval", "mmbench", "--data", str(tsv), *args]) == 2
        err = capsys.readouterr().err.strip()
        assert err.startswith("owl3: error:") and "\n" not in err


def test_against_owl3_serve_on_the_tiny_model(tiny_dir, tsv, tmp_path, capsys):
    import openai

    import owl3
    from owl3.serving.app import create_app
    from owl3.serving.chat import ServeConfig
    from owl3.serving.command import make_engine
    from tests.serve_helpers import ServerThread

    pipe = owl3.load(tiny_dir)
    app = create_app(pipe, make_engine(pipe, 4), ServeConfig(model_name="tiny"))
    out = tmp_path / "O.jsonl"
    with ServerThread(app) as server:
        args = ["eval", "mmbench", "--data", str(tsv), "--server", server.url + "/v1", "--limit", "2",
                "--max-new-tokens", "3", "--concurrency", "3", "--output", str(out), "--json"]  # fmt: skip
        assert main(args) == 0
        final = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
        assert final["model"].startswith("tiny @ ") and final["prompts"] == 5 and final["questions"] == 2
        # each record holds what the server answers to that prompt (greedy: the same again)
        client = openai.OpenAI(base_url=server.url + "/v1", api_key="x", max_retries=0)
        from owl3.evaluation.backends import content_parts
        from owl3.evaluation.mmbench import MMBenchTask

        item = next(iter(MMBenchTask(tsv).items()))
        parts, _ = content_parts(item)
        again = client.chat.completions.create(
            model="tiny", messages=[{"role": "user", "content": parts}], temperature=0, max_tokens=3
        )
    first = next(r for r in read_results(out)[1] if r["id"] == item.id)
    assert first["prediction"] == again.choices[0].message.content


def test_png_round_trip_keeps_pixels():
    from owl3.evaluation.backends import _png_url

    img = Image.new("RGB", (5, 5), RGB[COLOURS[4]])
    assert Image.open(io.BytesIO(_decode(_png_url(img)))).convert("RGB").tobytes() == img.tobytes()


def test_video_frames_are_scaled_down_and_kept_near_lossless():
    import av
    import numpy as np

    from owl3.evaluation.backends import frames_to_video

    frames = [Image.new("RGB", (1920, 1080), (10 * i, 100, 200 - 10 * i)) for i in range(5)]
    data = frames_to_video(frames)
    with av.open(io.BytesIO(data)) as c:
        got = [f.to_image() for f in c.decode(video=0)]
    assert len(got) == 5 and got[0].size == (768, 432)
    for want, img in zip(frames, got, strict=True):
        diff = np.abs(np.asarray(img, dtype=int) - np.asarray(want.resize(img.size), dtype=int))
        assert diff.max() <= 3
