"""`owl3 generate` and `owl3 chat`: help texts, answers equal to the Python API's, user mistakes as one
`owl3: error:` line with exit code 2, and a scripted chat session. Mostly in-process through
`owl3.cli.main`; a few real processes check the entry points and exit codes."""

from __future__ import annotations

import io
import subprocess
import sys
from pathlib import Path

import av
import numpy as np
import pytest

from owl3.api import DEFAULT_MODEL
from owl3.cli import main

OPTIONS = ("--model", "--image", "--video", "--frames", "--fps", "--max-frames", "--no-crop",
           "--max-new-tokens", "--temperature", "--top-p", "--top-k", "--repetition-penalty", "--seed",
           "--dtype", "--device", "--system")
N = "4"  # --max-new-tokens for every answer here


@pytest.fixture(scope="module")
def img(tiny_dir) -> str:
    return str(tiny_dir / "images" / "one.png")


@pytest.fixture(scope="module")
def img2(tiny_dir) -> str:
    return str(tiny_dir / "images" / "tall.png")


@pytest.fixture(scope="module")
def media(tmp_path_factory) -> dict[str, str]:
    """A real small video, a corrupt image, a corrupt video, an empty folder."""
    d = tmp_path_factory.mktemp("media")
    video = d / "clip.mp4"
    with av.open(str(video), "w") as out:
        stream = out.add_stream("mpeg4", rate=25)
        stream.width, stream.height, stream.pix_fmt = 64, 48, "yuv420p"
        for i in range(30):
            a = np.full((48, 64, 3), 8 * i, np.uint8)
            out.mux(stream.encode(av.VideoFrame.from_ndarray(a, format="rgb24")))
        out.mux(stream.encode())
    (d / "bad.png").write_bytes(b"definitely not a PNG" * 20)
    (d / "bad.mp4").write_bytes(b"\x00\x01 not a video \xfe\xff" * 40)
    (d / "empty").mkdir()
    return {"video": str(video), "bad_png": str(d / "bad.png"), "bad_mp4": str(d / "bad.mp4"),
            "empty_dir": str(d / "empty"), "missing": str(d / "missing.png"),
            "missing_mp4": str(d / "none.mp4")}


TINY = str(Path(__file__).parent / "fixtures" / "official-240728-tiny")


def _run(capsys, argv: list[str]) -> tuple[int, str, str]:
    """Run the CLI in-process; generate/chat get the fixture weights (what `tiny_pipe` holds) unless the
    test names a --model (the default model, the trained demo model, has its own tests: test_demo.py)."""
    if argv and argv[0] in ("generate", "chat") and "--model" not in argv:
        argv = [argv[0], "--model", TINY, *argv[1:]]
    rc = main(argv)
    out, err = capsys.readouterr()
    return rc, out, err


def _chat(capsys, monkeypatch, script: str, *argv: str) -> tuple[int, str, str]:
    monkeypatch.setattr(sys, "stdin", io.StringIO(script))
    return _run(capsys, ["chat", "--max-new-tokens", N, *argv])


def _assert_one_error_line(err: str, *words: str) -> None:
    lines = err.splitlines()
    assert len(lines) == 1, err
    assert lines[0].startswith("owl3: error: "), err
    assert "Traceback" not in err
    for w in words:
        assert w.lower() in lines[0].lower(), (w, lines[0])


# ---------------------------------------------------------------------------------------- help
def test_default_model_is_the_shipped_demo_model():
    assert DEFAULT_MODEL.name == "demo" and DEFAULT_MODEL.parent.name == "assets"
    for name in ("config.json", "model.safetensors", "tokenizer.json", "generation_config.json"):
        assert (DEFAULT_MODEL / name).is_file(), name
    size = sum(f.stat().st_size for f in DEFAULT_MODEL.iterdir())
    assert size <= 20_000_000, size


@pytest.mark.parametrize("command", [[], ["generate"], ["chat"]], ids=["owl3", "generate", "chat"])
def test_help(capsys, command):
    with pytest.raises(SystemExit) as exc:
        main([*command, "--help"])
    assert exc.value.code == 0
    out = capsys.readouterr().out
    assert out.startswith(f"usage: owl3 {command[0]}" if command else "usage: owl3")
    if not command:
        assert "generate" in out and "chat" in out
        return
    for opt in OPTIONS:
        assert opt in out, opt


def test_no_command_prints_the_commands(capsys):
    assert main([]) == 2
    err = capsys.readouterr().err
    assert err.startswith("usage: owl3") and "generate" in err and "serve" in err


@pytest.mark.parametrize(
    "argv, said",
    [
        (["train", "--lora-rank", "0"], "owl3 train: error: unrecognized arguments: --lora-rank 0"),
        (["eval", "mmbench", "--data", "x", "--bad"], "owl3 eval mmbench: error: unrecognized"),
        (["eval", "nosuch"], "owl3 eval: error: argument TASK: invalid choice: 'nosuch'"),
        (["generate", "--max-pixels", "-5", "a"], "owl3 generate: error: argument --max-pixels"),
        (["demo", "--seed", "x"], "owl3 demo: error: argument --seed: invalid int value: 'x'"),
        (["build", "--llm", "x"], "owl3 build: error: the following arguments are required"),
    ],
)
def test_a_mistake_in_the_arguments_is_one_line_naming_the_commands_help(capsys, argv, said):
    with pytest.raises(SystemExit) as exc:
        main(argv)
    assert exc.value.code == 2
    err = capsys.readouterr().err
    assert err.startswith(said) and err.count("\n") == 1, err
    assert err.rstrip().endswith(f"(see '{said.split(': error')[0]} --help')")


# ---------------------------------------------------------------------------------------- generate
def test_generate_prints_what_chat_returns(capsys, tiny_pipe, img):
    rc, out, err = _run(capsys, ["generate", "--image", img, "Describe", "--max-new-tokens", "5"])
    assert rc == 0
    assert out == tiny_pipe.chat("Describe", images=[img], max_new_tokens=5) + "\n"
    assert "error" not in err


def test_generate_options_reach_the_api(capsys, tiny_pipe, tiny_dir, img, img2):
    system = [{"role": "system", "content": "Answer in French."}, {"role": "user", "content": "Describe"}]
    cases = [
        (["--model", str(tiny_dir), "--image", img, "--no-crop"],
         tiny_pipe.chat("Describe", images=[img], cut=False, max_new_tokens=4)),
        (["--image", img, "--image", img2, "--crop"],
         tiny_pipe.chat("Describe", images=[img, img2], cut=True, max_new_tokens=4)),
        (["--system", "Answer in French."], tiny_pipe.chat(system, max_new_tokens=4)),
        (["--temperature", "1.3", "--top-p", "0.9", "--top-k", "50", "--seed", "7",
          "--repetition-penalty", "1.2"],
         tiny_pipe.chat("Describe", temperature=1.3, top_p=0.9, top_k=50, seed=7, repetition_penalty=1.2,
                        max_new_tokens=4)),
    ]
    for extra, expected in cases:
        rc, out, _ = _run(capsys, ["generate", "Describe", "--max-new-tokens", N, *extra])
        assert rc == 0, extra
        assert out == expected + "\n", extra
    assert len({c[1] for c in cases}) > 1  # the options really change the answer


def test_generate_video(capsys, tiny_pipe, media):
    expected = tiny_pipe.chat("What happens?", videos=[media["video"]], frames=4, max_new_tokens=4)
    rc, out, _ = _run(capsys, ["generate", "--video", media["video"], "--frames", "4", "What happens?",
                               "--max-new-tokens", N])
    assert rc == 0
    assert out == expected + "\n"
    expected = tiny_pipe.chat("What happens?", videos=[media["video"]], fps=25, max_frames=3,
                              max_new_tokens=4)
    rc, out, _ = _run(capsys, ["generate", "--video", media["video"], "--fps", "25", "--max-frames", "3",
                               "What happens?", "--max-new-tokens", N])
    assert rc == 0
    assert out == expected + "\n"


BAD = {
    "missing image": (["--image", "{missing}"], ["not found", "missing.png"]),
    "corrupt image": (["--image", "{bad_png}"], ["cannot read image", "bad.png"]),
    "not a checkpoint": (["--model", "{empty_dir}"], ["config.json"]),
    "no such model": (["--model", "{empty_dir}/nope"], ["does not exist"]),
    "unknown dtype": (["--dtype", "float7"], ["dtype", "float7"]),
    "unknown device": (["--device", "banana"], ["device", "banana"]),
    "placeholder mismatch": (["--image", "{img}", "<|image|> and <|image|>?"], ["placeholder", "1 image"]),
    "frames 0": (["--video", "{video}", "--frames", "0"], ["frames", "positive"]),
    "missing video": (["--video", "{missing_mp4}"], ["not found", "none.mp4"]),
    "corrupt video": (["--video", "{bad_mp4}"], ["bad.mp4", "video"]),
    "negative temperature": (["--temperature", "-1"], ["temperature"]),
    "top-p 0": (["--top-p", "0"], ["top_p"]),
    "max-new-tokens 0": (["--max-new-tokens", "0"], ["max_new_tokens"]),
}


@pytest.mark.parametrize("case", list(BAD))
def test_generate_bad_input_is_one_error_line(capsys, case, media, img):
    args, words = BAD[case]
    args = [a.format(img=img, **media) for a in args]
    prompt = [] if any("<|image|>" in a for a in args) else ["Describe"]
    rc, out, err = _run(capsys, ["generate", "--max-new-tokens", N, *prompt, *args])
    assert rc == 2
    assert out == ""
    _assert_one_error_line(err, *words)


def test_real_process_exit_code(tmp_path):
    """The installed console script (or `python -m owl3.cli`) in a real process: exit 2, one line."""
    script = Path(sys.executable).parent / "owl3"
    cmd = [str(script)] if script.exists() else [sys.executable, "-m", "owl3.cli"]
    proc = subprocess.run([*cmd, "generate", "--image", str(tmp_path / "x.png"), "hi"],
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == 2
    assert proc.stdout == ""
    _assert_one_error_line(proc.stderr, "not found", "x.png")


# ---------------------------------------------------------------------------------------- chat
def test_chat_session(capsys, monkeypatch, tiny_pipe, img, media):
    script = "\n".join([
        "hello",
        f"/image {img}",
        "What is in it?",
        f"/image {media['missing']}",
        "/frobnicate",
        f"/image {media['bad_png']}",
        "This one fails.",
        "Go on.",
        "",
        "/reset",
        "hello",
        "/quit",
        "never answered",
    ]) + "\n"
    rc, out, err = _chat(capsys, monkeypatch, script)
    assert rc == 0

    n = dict(max_new_tokens=4)
    a1 = tiny_pipe.chat("hello", **n)
    history = [{"role": "user", "content": "hello"}, {"role": "assistant", "content": a1},
               {"role": "user", "content": "<|image|>\nWhat is in it?"}]
    a2 = tiny_pipe.chat(history, images=[img], **n)
    history += [{"role": "assistant", "content": a2}, {"role": "user", "content": "Go on."}]
    a3 = tiny_pipe.chat(history, images=[img], **n)
    assert out == f"{a1}\n{a2}\n{a3}\n{a1}\n"  # after /reset, "hello" is answered as the first time

    assert "Traceback" not in err
    errors = [line for line in err.splitlines() if line.startswith("owl3: error:")]
    assert len(errors) == 2
    assert "missing.png" in errors[0]
    assert "bad.png" in errors[1] and "cannot read image" in errors[1]
    assert "unknown command /frobnicate" in err
    assert "(conversation cleared)" in err


def test_chat_video_attachment(capsys, monkeypatch, tiny_pipe, media):
    rc, out, err = _chat(capsys, monkeypatch, f"/video {media['video']}\nWhat happens?\n", "--frames", "4")
    assert rc == 0, err
    messages = [{"role": "user", "content": "<|video|>\nWhat happens?"}]
    expected = tiny_pipe.chat(messages, videos=[media["video"]], frames=4, max_new_tokens=4)
    assert out == expected + "\n"


def test_chat_bad_model_exits_2(capsys, monkeypatch, media):
    rc, out, err = _chat(capsys, monkeypatch, "hello\n", "--model", media["empty_dir"])
    assert rc == 2
    _assert_one_error_line(err, "config.json")


def test_chat_with_image_option(capsys, monkeypatch, tiny_pipe, img):
    rc, out, err = _chat(capsys, monkeypatch, "What is in it?\n", "--image", img)
    assert rc == 0
    assert "error" not in err
    assert out == tiny_pipe.chat("What is in it?", images=[img], max_new_tokens=4) + "\n"


def test_closed_stdout_ends_quietly(tmp_path):
    # `owl3 ... | head`: the reader closes the pipe early; no traceback, the shell's SIGPIPE status
    script = tmp_path / "chatty.py"
    script.write_text(
        "import argparse, sys\n"
        "from owl3 import cli\n"
        "def chatty(args):\n"
        "    for _ in range(100000):\n"
        "        print('x' * 100)\n"
        "    return 0\n"
        "parser = argparse.ArgumentParser()\n"
        "parser.add_argument('word')\n"
        "parser.set_defaults(func=chatty)\n"
        "cli.build_parser = lambda: parser\n"
        "sys.exit(cli.main(['x']))\n"
    )
    cmd = f"{sys.executable} {script} | head -1; echo status ${{PIPESTATUS[0]}}"
    proc = subprocess.run(["bash", "-c", cmd], capture_output=True, text=True, timeout=120)
    assert proc.stdout == "x" * 100 + "\nstatus 141\n" and "Traceback" not in proc.stderr, proc.stderr
