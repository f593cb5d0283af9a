"""`owl3 eval synthetic`: the demo world's questions as an evaluation task (owl3/demo/synthetic.py).

`owl3 eval synthetic --seed S --images 1,5,20,50,100 [--limit N] --output R.jsonl --json` prints a table,
writes one JSON line per question to R.jsonl and a plot to R.png (or --plot), and with --json ends
with one line of JSON: {"task": "synthetic", "results": [{"images": N, "questions": Q, "accuracy": A}, ...],
"video": {...}, "which": {...}}. Each row also carries its Wilson 95% interval ("ci95").
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from owl3.errors import Owl3Error
from owl3.evaluation.command import task_parsers
from owl3.options import add_model_args, load_pipeline


def parse_counts(text: str) -> list[int]:
    try:
        counts = [int(x) for x in text.split(",") if x.strip()]
    except ValueError:
        counts = []
    if not counts or any(n < 1 for n in counts):
        raise Owl3Error(
            f"--images takes positive image counts separated by commas (e.g. 1,5,20), got {text!r}"
        )
    return counts


def add_eval_parser(sub: argparse._SubParsersAction) -> None:
    """`owl3 eval synthetic`."""
    s = task_parsers(sub).add_parser(
        "synthetic",
        help="questions about the synthetic world: 1..N images (distractors), video, which image",
        description="Questions about procedurally drawn scenes that no model has seen: for each image "
        "count, 'Image 1: <|image|> ... Image N: <|image|>. In Image X, <question>' (the paper's "
        "distractor test), plus video and 'which image' questions. Greedy decoding, exact-match scoring.",
    )
    s.add_argument("--seed", type=int, default=0, help="question seed (default 0)")
    s.add_argument(
        "--images", default="1,5,20,50,100", metavar="N,N,...", help="image counts (default 1,5,20,50,100)"
    )
    s.add_argument("--limit", type=int, default=50, metavar="N", help="questions per row (default 50)")
    s.add_argument(
        "--video-frames", type=int, default=8, metavar="F", help="frames per video; 0 = no video row"
    )
    s.add_argument(
        "--which-images",
        type=int,
        default=5,
        metavar="N",
        help="images per 'which image' question; 0 = no row",
    )
    s.add_argument("--output", metavar="R.jsonl", default=None, help="write one JSON line per question here")
    s.add_argument(
        "--plot", metavar="P.png", default=None, help="accuracy plot (default: R.png next to --output)"
    )
    s.add_argument("--json", action="store_true", help="end with one line of JSON holding the results")
    s.add_argument(
        "--batch-size", type=int, default=8, metavar="B", help="questions answered at a time (default 8)"
    )
    s.add_argument("--max-new-tokens", type=int, default=32, metavar="N", help="answer length limit (32)")
    add_model_args(s)
    s.set_defaults(func=cmd_eval_synthetic)


def cmd_eval_synthetic(args: argparse.Namespace) -> int:
    from owl3.demo.synthetic import SyntheticTask
    from owl3.evaluation.runner import evaluate, format_kinds, format_table

    task = SyntheticTask(
        seed=args.seed,
        images=parse_counts(args.images),
        limit=args.limit,
        frames=args.video_frames,
        which_images=args.which_images,
    )
    pipe = load_pipeline(args)
    report = evaluate(
        task,
        pipe,
        batch_size=args.batch_size,
        max_new_tokens=args.max_new_tokens,
        output=args.output,
        progress=sys.stderr.isatty(),
    )
    model = str(pipe.path)
    n, seconds = len(report.records), report.seconds
    print(f"synthetic (seed {args.seed}) on {model}: {n} questions in {seconds:.1f} s")
    print(format_table(report))
    print(format_kinds(report))
    plot = args.plot or (str(Path(args.output).with_suffix(".png")) if args.output else None)
    if plot:
        from owl3.evaluation.plot import plot_accuracy

        plot_accuracy(report.summary, plot, f"owl3 synthetic (seed {args.seed}): {Path(model).name}")
        print(f"plot: {plot}")
    if args.output:
        print(f"records: {args.output}")
    if args.json:
        print(json.dumps({**report.summary, "model": model}))
    return 0
