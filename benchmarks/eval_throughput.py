"""Does `owl3 eval` keep the model busy? Prompts per second of one MMBench-format run answered one prompt
at a time and in batches (local), and with one request and several in flight (`owl3 serve`, in process),
side by side on one model.

    .venv/bin/python benchmarks/eval_throughput.py [--model DIR] [--questions 16] [--batch-sizes 1,8]
        [--concurrency 1,8] [--max-new-tokens 8] [--rounds 2]

Writes a small MMBench TSV (one image per question, CircularEval: 2-4 prompts per question) into a
temporary folder, then runs `run_benchmark` on it once per setting and round, settings alternating within
a round (a shared machine is noisy: compare the ratios of one run), after one warm-up round. The server
is `owl3 serve`'s app on a free local port with as many engine slots as the largest concurrency; the local
runs use their own copy of the model. Prints a table and a last line of JSON.
"""

from __future__ import annotations

import argparse
import base64
import csv
import io
import json
import socket
import statistics
import sys
import tempfile
import threading
import time
from pathlib import Path

from PIL import Image

import owl3
from owl3.bench.common import machine
from owl3.evaluation.backends import LocalBackend, ServerBackend
from owl3.evaluation.benchmark import run_benchmark
from owl3.evaluation.mmbench import MMBenchTask

COLOURS = ["red", "green", "blue", "yellow", "purple", "orange", "white", "black"]
RGB = [(220, 30, 30), (30, 200, 30), (30, 30, 220), (230, 230, 40), (140, 40, 160), (250, 140, 20),
       (250, 250, 250), (5, 5, 5)]  # fmt: skip


def write_tsv(path: Path, n: int) -> Path:
    cols = ["index", "question", "hint", "A", "B", "C", "D", "answer", "category", "l2-category", "image"]
    with open(path, "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=cols, delimiter="\t")
        w.writeheader()
        for i in range(n):
            buf = io.BytesIO()
            Image.new("RGB", (448, 336), RGB[i % len(RGB)]).save(buf, format="PNG")
            k = 2 + i % 3
            options = [COLOURS[(i + j) % len(COLOURS)] for j in range(k)]
            row = {"index": i, "question": "What colour is the picture?", "hint": "", "answer": "A",
                   "category": "colour", "l2-category": "perception",
                   "image": base64.b64encode(buf.getvalue()).decode()}  # fmt: skip
            row.update({c: (options[j] if j < k else "") for j, c in enumerate("ABCD")})
            w.writerow(row)
    return path


def serve(pipe, slots: int):
    """owl3 serve's app on a free port in a daemon thread: (base URL, server)."""
    from owl3.serving.app import create_app, make_server
    from owl3.serving.chat import ServeConfig
    from owl3.serving.command import make_engine

    app = create_app(pipe, make_engine(pipe, slots), ServeConfig(model_name="bench"))
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    port = sock.getsockname()[1]
    server = make_server(app, "127.0.0.1", port, log_level="warning")
    threading.Thread(target=server.run, kwargs={"sockets": [sock]}, daemon=True).start()
    deadline = time.monotonic() + 60
    while not server.started:
        if time.monotonic() > deadline:
            sys.exit("the server did not start")
        time.sleep(0.05)
    return f"http://127.0.0.1:{port}/v1", server


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--model", default=None, help="checkpoint folder (default: the built-in model)")
    ap.add_argument("--questions", type=int, default=16)
    ap.add_argument("--batch-sizes", default="1,8")
    ap.add_argument("--concurrency", default="1,8")
    ap.add_argument("--max-new-tokens", type=int, default=8)
    ap.add_argument("--rounds", type=int, default=2)
    args = ap.parse_args()
    sizes = [int(x) for x in args.batch_sizes.split(",") if x]
    conc = [int(x) for x in args.concurrency.split(",") if x]

    with tempfile.TemporaryDirectory() as tmp:
        task = MMBenchTask(write_tsv(Path(tmp) / "bench.tsv", args.questions))
        items = list(task.items())
        local_pipe = owl3.load(args.model)
        url, server = serve(owl3.load(args.model), max(conc)) if conc else (None, None)
        settings = [("local", "batch", b) for b in sizes] + [("owl3 serve", "in flight", c) for c in conc]
        seconds: dict[tuple, list[float]] = {s: [] for s in settings}
        for r in range(args.rounds + 1):  # round 0 warms up (first allocations, first kernels): not counted
            for s in settings:
                mode, _, n = s
                new = args.max_new_tokens
                if mode == "local":
                    backend = LocalBackend(local_pipe, batch_size=n, max_new_tokens=new)
                else:
                    backend = ServerBackend(url, model="bench", concurrency=n, max_new_tokens=new)
                out = run_benchmark(task, backend, items=items, progress=False)
                if r > 0:
                    seconds[s].append(out.seconds)
        if server is not None:
            server.should_exit = True

    rows = []
    for mode in ("local", "owl3 serve"):
        base = None
        for s in [s for s in settings if s[0] == mode]:
            sec = statistics.median(seconds[s])
            rate = len(items) / sec
            base = base or rate
            rows.append({"mode": mode, "setting": f"{s[1]} {s[2]}", "prompts": len(items),
                         "seconds": round(sec, 2), "prompts_per_s": round(rate, 2),
                         "speedup": round(rate / base, 2)})  # fmt: skip
    m = machine()
    print(f"owl3 eval throughput: {len(items)} MMBench-format prompts, {args.max_new_tokens} new tokens, "
          f"median of {args.rounds} rounds; model {args.model or 'built-in'}; {m['cpu']}")  # fmt: skip
    print(f"{'mode':<11} {'setting':<13} {'seconds':>8} {'prompts/s':>10} {'vs first':>9}")
    for r in rows:
        print(f"{r['mode']:<11} {r['setting']:<13} {r['seconds']:>8.2f} {r['prompts_per_s']:>10.2f} "
              f"{r['speedup']:>8.2f}x")  # fmt: skip
    print(json.dumps({"benchmark": "eval_throughput", "model": args.model or "built-in", "machine": m,
                      "rows": rows}))  # fmt: skip
    return 0


if __name__ == "__main__":
    sys.exit(main())
