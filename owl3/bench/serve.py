"""`owl3 bench serve`: continuous batching against one request at a time, through a real server.

For each batch setting (`--max-num-seqs B`, then 1: one request at a time) it starts `owl3 serve` in a
process of its own on a free local port, then for each client count N runs N client threads that each
send `--requests` streaming chat completions one after another (stdlib HTTP, Server-Sent Events read as
they arrive) and records per request the time to the first token and the gaps between tokens. Throughput
is all completion tokens (the server's `usage`) over the wall time of that client count.

`--preset NAME` serves random weights of a named shape with the built-in model's tokenizer (answers are
noise, of the length the weights happen to give; both settings answer the same prompts identically, greedy),
`--model DIR` a checkpoint. Loopback only. The report is a table followed by one JSON line.
"""

from __future__ import annotations

import argparse
import http.client
import json
import os
import socket
import subprocess
import sys
import tempfile
import threading
import time
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

from owl3.errors import Owl3Error

HOST = "127.0.0.1"


@dataclass
class Sample:
    ttft_s: float
    gaps_s: list[float] = field(default_factory=list)
    tokens: int = 0


def percentile(values: list[float], q: float) -> float:
    """The q-th percentile (0-100), linear between closest ranks; nan for no values."""
    if not values:
        return float("nan")
    xs = sorted(values)
    k = (len(xs) - 1) * q / 100
    lo, hi = int(k), min(int(k) + 1, len(xs) - 1)
    return xs[lo] + (xs[hi] - xs[lo]) * (k - lo)


def preset_checkpoint(
    name: str, out: Path, seed: int = 0, dtype: str = "float32", device: str = "cpu"
) -> Path:
    """A checkpoint folder of preset `name` with random weights and the built-in model's tokenizer, made
    in `dtype` on `device` (a 7B checkpoint in float32 on the CPU would take minutes and 30 GB)."""
    from owl3.api import DEFAULT_MODEL
    from owl3.bench.common import random_model
    from owl3.checkpoint import read_config, save_model
    from owl3.config import preset

    vocab = read_config(DEFAULT_MODEL).text
    cfg = preset(name)
    cfg = replace(
        cfg,
        text=replace(cfg.text, vocab_size=vocab.vocab_size),
        bos_token_id=read_config(DEFAULT_MODEL).bos_token_id,
        eos_token_id=read_config(DEFAULT_MODEL).eos_token_id,
    )
    out = save_model(random_model(cfg, dtype, device, seed=seed), out, copy_from=DEFAULT_MODEL)
    if cfg.variant == "241101":  # its templates' four tokens, after the built-in tokenizer's own
        import tokenizers

        from owl3.processing.processor import with_241101_tokens

        tok = with_241101_tokens(tokenizers.Tokenizer.from_file(str(out / "tokenizer.json")))
        if tok.get_vocab_size() > cfg.text.vocab_size:
            raise Owl3Error(f"preset {name!r}: the built-in tokenizer with the 241101 tokens passes its rows")
        tok.save(str(out / "tokenizer.json"))
    return out


def free_port() -> int:
    with socket.socket() as s:
        s.bind((HOST, 0))
        return s.getsockname()[1]


class Server:
    """`owl3 serve` in a subprocess, up once /health answers 200."""

    def __init__(self, model: Path, max_num_seqs: int, extra: list[str], timeout: float = 300) -> None:
        self.port = free_port()
        cmd = [sys.executable, "-m", "owl3.cli", "serve", "--model", str(model), "--host", HOST,
               "--port", str(self.port), "--max-num-seqs", str(max_num_seqs), "--max-queue", "1024",
               *extra]  # fmt: skip
        self.proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
        t0 = time.perf_counter()
        while time.perf_counter() - t0 < timeout:
            if self.proc.poll() is not None:
                raise Owl3Error(f"owl3 serve exited: {self.proc.stderr.read().strip().splitlines()[-1:]}")
            try:
                conn = http.client.HTTPConnection(HOST, self.port, timeout=2)
                conn.request("GET", "/health")
                if conn.getresponse().status == 200:
                    return
            except OSError:
                pass
            time.sleep(0.2)
        self.stop()
        raise Owl3Error(f"owl3 serve did not come up within {timeout:.0f} s")

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(30)
            except subprocess.TimeoutExpired:
                self.proc.kill()


def stream_request(
    port: int, model: str, prompt: str | list[dict], max_tokens: int, extra: dict | None = None
) -> Sample:
    """One streaming chat completion; `prompt` is a user message's text or the whole message list."""
    messages = [{"role": "user", "content": prompt}] if isinstance(prompt, str) else prompt
    body = json.dumps({
        "model": model, "messages": messages, "max_tokens": max_tokens, "temperature": 0, "stream": True,
        "stream_options": {"include_usage": True}, **(extra or {}),
    })  # fmt: skip
    conn = http.client.HTTPConnection(HOST, port, timeout=600)
    t0 = time.perf_counter()
    conn.request("POST", "/v1/chat/completions", body, {"Content-Type": "application/json"})
    resp = conn.getresponse()
    if resp.status != 200:
        raise Owl3Error(f"the server answered {resp.status}: {resp.read()[:200]!r}")
    sample, last = None, t0
    for raw in resp:
        line = raw.decode().strip()
        if not line.startswith("data: ") or line == "data: [DONE]":
            continue
        chunk = json.loads(line[6:])
        if chunk.get("usage"):
            if sample is not None:
                sample.tokens = chunk["usage"]["completion_tokens"]
            continue
        if not any(c.get("delta", {}).get("content") for c in chunk.get("choices", [])):
            continue
        now = time.perf_counter()
        if sample is None:
            sample = Sample(now - t0)
        else:
            sample.gaps_s.append(now - last)
        last = now
    conn.close()
    return sample or Sample(float("nan"))


def run_clients(port: int, model: str, clients: int, requests: int, new_tokens: int) -> dict[str, Any]:
    samples: list[Sample] = []
    errors: list[str] = []
    lock = threading.Lock()

    def client(c: int) -> None:
        for r in range(requests):
            prompt = f"Request {c}-{r}: tell me about the pictures of the world, number {c * 31 + r}."
            try:
                s = stream_request(port, model, prompt, new_tokens)
            except Exception as e:  # reported, the others go on
                with lock:
                    errors.append(str(e))
                continue
            with lock:
                samples.append(s)

    threads = [threading.Thread(target=client, args=(c,)) for c in range(clients)]
    t0 = time.perf_counter()
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    wall = time.perf_counter() - t0
    if errors:
        raise Owl3Error(f"{len(errors)} requests failed, e.g. {errors[0]}")
    ttft = [s.ttft_s for s in samples]
    gaps = [g for s in samples for g in s.gaps_s]
    tokens = sum(s.tokens for s in samples)
    return {
        "requests": len(samples),
        "tokens": tokens,
        "wall_s": round(wall, 3),
        "throughput_tok_s": round(tokens / wall, 2),
        "ttft_p50_s": round(percentile(ttft, 50), 4),
        "ttft_p99_s": round(percentile(ttft, 99), 4),
        "itl_p50_ms": round(percentile(gaps, 50) * 1e3, 2),
        "itl_p99_ms": round(percentile(gaps, 99) * 1e3, 2),
    }


def followup(port: int, model: str, frames: int, seconds: float = 60) -> dict[str, Any]:
    """Time to first token of a question about a `frames`-frame video, and of the next turn of the same
    conversation, which sends the video again (as OpenAI clients do)."""
    import base64

    from owl3.bench.video import write_test_video

    with tempfile.TemporaryDirectory(prefix="owl3-bench-video-") as tmp:
        path = write_test_video(Path(tmp) / "clip.mp4", seconds=seconds, fps=25, gop=50)
        url = "data:video/mp4;base64," + base64.b64encode(path.read_bytes()).decode()
    video = {"type": "video_url", "video_url": {"url": url}}
    kw = {"media_io_kwargs": {"video": {"num_frames": frames}}}
    turn1 = [{"role": "user", "content": [video, {"type": "text", "text": "What happens in the video?"}]}]
    first = stream_request(port, model, turn1, 8, kw)
    turn2 = [*turn1, {"role": "assistant", "content": "Bars move."}, {"role": "user", "content": "And then?"}]
    second = stream_request(port, model, turn2, 8, kw)
    ratio = second.ttft_s / first.ttft_s
    return {"frames": frames, "first_ttft_s": round(first.ttft_s, 4),
            "followup_ttft_s": round(second.ttft_s, 4), "ratio": round(ratio, 3)}  # fmt: skip


def run(args: argparse.Namespace) -> int:
    try:
        counts = [int(x) for x in args.clients.split(",") if x.strip()]
    except ValueError:
        counts = []
    if not counts or min(counts) < 1 or args.requests < 1 or args.new_tokens < 1 or args.max_num_seqs < 1:
        raise Owl3Error("--clients takes positive counts (e.g. 1,4,16); --requests, --new-tokens, "
                        "--max-num-seqs must be >= 1")  # fmt: skip
    extra = ["--dtype", args.dtype, "--device", args.device]
    with tempfile.TemporaryDirectory(prefix="owl3-bench-serve-") as tmp:
        if args.model:
            model, name = Path(args.model), args.model
        else:
            model = preset_checkpoint(
                args.preset, Path(tmp) / args.preset, dtype=args.dtype, device=args.device
            )
            name = str(model)
        rows, follow = [], None
        for seqs in dict.fromkeys((args.max_num_seqs, 1)):
            server = Server(model, seqs, [*extra, "--max-frames", str(max(args.followup_frames, 8))])
            try:
                stream_request(server.port, name, "warm up", 4)
                if follow is None and args.followup_frames:
                    follow = followup(server.port, name, args.followup_frames)
                for n in counts:
                    row = {"clients": n, "max_num_seqs": seqs}
                    row.update(run_clients(server.port, name, n, args.requests, args.new_tokens))
                    rows.append(row)
                    if not args.json:
                        print(f"  max_num_seqs {seqs:>3}, {n:>3} clients: {row['throughput_tok_s']} tok/s",
                              file=sys.stderr, flush=True)  # fmt: skip
            finally:
                server.stop()
    device = args.device if args.device != "cpu" else _cpu()
    report = {"preset": None if args.model else args.preset, "model": args.model, "device": device,
              "new_tokens": args.new_tokens, "requests_per_client": args.requests,
              "results": rows, "followup": follow}  # fmt: skip
    if not args.json:
        print(format_table(rows))
        if follow:
            print(f"follow-up turn resending a {follow['frames']}-frame video: first token in "
                  f"{follow['followup_ttft_s']:.3f} s against {follow['first_ttft_s']:.3f} s for the first "
                  f"question ({follow['ratio']:.2f}x)")  # fmt: skip
    print(json.dumps(report))
    return 0


def _cpu() -> str:
    from owl3.bench.common import cpu_name

    return f"{cpu_name()} ({os.cpu_count()} cores)"


def format_table(rows: list[dict[str, Any]]) -> str:
    head = ("clients", "max_num_seqs", "tokens", "tok/s", "vs 1 at a time", "TTFT p50", "TTFT p99",
            "ITL p50", "ITL p99")  # fmt: skip
    one = {r["clients"]: r["throughput_tok_s"] for r in rows if r["max_num_seqs"] == 1}
    lines = [head]
    for r in rows:
        ratio = r["throughput_tok_s"] / one[r["clients"]] if one.get(r["clients"]) else float("nan")
        lines.append((str(r["clients"]), str(r["max_num_seqs"]), str(r["tokens"]),
                      f"{r['throughput_tok_s']:.1f}", f"{ratio:.2f}x", f"{r['ttft_p50_s']:.3f} s",
                      f"{r['ttft_p99_s']:.3f} s", f"{r['itl_p50_ms']:.1f} ms",
                      f"{r['itl_p99_ms']:.1f} ms"))  # fmt: skip
    widths = [max(len(line[i]) for line in lines) for i in range(len(head))]
    return "\n".join("  ".join(c.rjust(w) for c, w in zip(line, widths, strict=True)) for line in lines)
