"""`owl3 eval TASK ...`: the argument wiring of the evaluation command (called from owl3/cli.py).

`owl3 eval synthetic --seed S --images 1,5,20,50,100 [--limit N] --output R.jsonl --json` prints a table,
writes one JSON line per question to R.jsonl and a plot to R.png (or --plot), and with --json ends
with one line of JSON: {"task": "synthetic", "results": [{"images": N, "questions": Q, "accuracy": A}, ...],
"video": {...}, "which": {...}}. Each row also carries its Wilson 95% interval ("ci95").

`owl3 eval compare A.jsonl B.jsonl [--json]` compares two such record files question by question (the
same seed asks the same questions): per row both accuracies, the questions only one model got right,
and McNemar's exact p-value (owl3/evaluation/stats.py).
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from owl3.errors import Owl3Error


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


def add_parser(sub: argparse._SubParsersAction) -> None:
    from owl3.cli import _add_model_args

    e = sub.add_parser(
        "eval",
        help="evaluate a model on a benchmark task",
        description="Evaluate a model on a task; prints a table (and a JSON line with --json).",
    )
    tasks = e.add_subparsers(dest="task", metavar="TASK", required=True)
    s = tasks.add_parser(
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
    s.add_argument(
        "--layout",
        choices=("official", "label_after", "question_first", "question_twice"),
        default=None,
        help="where list questions stand: after the images (official; label_after with each label after "
        "its image), before them (question_first) or both (question_twice); default: the model's own (its "
        "demo_layout.json, else official)",
    )
    s.add_argument("--output", metavar="R.jsonl", default=None, help="write one JSON line per question here")
    s.add_argument(
        "--plot", metavar="P.png", default=None, help="accuracy plot (default: R.png next to --output)"
    )
    s.add_argument("--json", action="store_true", help="end with one line of JSON holding the results")
    s.add_argument("--batch-size", type=int, default=8, metavar="B", help="questions per batch (default 8)")
    s.add_argument("--max-new-tokens", type=int, default=32, metavar="N", help="answer length limit (32)")
    _add_model_args(s)
    s.set_defaults(func=cmd_eval_synthetic)
    c = tasks.add_parser(
        "compare",
        help="compare two models' records question by question (paired; McNemar's exact test)",
        description="Compare two --output files of one task run with the same seed: per row both "
        "accuracies, the questions only one model got right, and an exact McNemar p-value.",
    )
    c.add_argument("a", metavar="A.jsonl", help="records of the first model")
    c.add_argument("b", metavar="B.jsonl", help="records of the second model")
    c.add_argument("--json", action="store_true", help="end with one line of JSON holding the rows")
    c.set_defaults(func=cmd_eval_compare)


def cmd_eval_synthetic(args: argparse.Namespace) -> int:
    import owl3
    from owl3.api import DEFAULT_MODEL
    from owl3.demo.questions import model_layout
    from owl3.evaluation.runner import evaluate, format_kinds, format_table
    from owl3.evaluation.synthetic import SyntheticTask

    task = SyntheticTask(
        seed=args.seed,
        images=parse_counts(args.images),
        limit=args.limit,
        frames=args.video_frames,
        which_images=args.which_images,
        layout=args.layout or model_layout(args.model or DEFAULT_MODEL),
    )
    pipe = owl3.load(args.model, dtype=args.dtype, device=args.device)
    report = evaluate(
        task,
        pipe,
        batch_size=args.batch_size,
        max_new_tokens=args.max_new_tokens,
        output=args.output,
        progress=sys.stderr.isatty(),
    )
    model = str(pipe.path)
    asked = "" if task.layout == "official" else f", list questions in the {task.layout} layout"
    print(
        f"synthetic (seed {args.seed}) on {model}: {len(report.records)} questions in {report.seconds:.1f} s"
        + asked
    )
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


def cmd_eval_compare(args: argparse.Namespace) -> int:
    from owl3.evaluation.stats import compare, format_compare, read_records

    rows = compare(read_records(args.a), read_records(args.b))
    print(format_compare(rows, args.a, args.b))
    if args.json:
        print(json.dumps({"a": args.a, "b": args.b, "rows": [r.to_dict() for r in rows]}))
    return 0
