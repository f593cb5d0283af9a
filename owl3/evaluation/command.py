"""`owl3 eval TASK ...`: the evaluation command. A task's own subcommand lives with its feature and adds
itself through `task_parsers` (`owl3 eval synthetic`: owl3/demo/evaluate.py).

The benchmark tasks (mmbench, distractor, nlvr2, videomme, mvbench, longvideobench) share one set of
options: `--data PATH (--model DIR | --server URL [--api-key K] [--served-model NAME]) --output R.jsonl
[--limit N] [--batch-size B] [--concurrency C] [--shard i/K] [--json]` (docs/evaluation.md).
`owl3 eval merge R1.jsonl R2.jsonl ...` joins the shards of one run and scores them.

`owl3 eval compare A.jsonl B.jsonl [--json]` compares two such record files question by question (the
same seed asks the same questions): per row both accuracies, the questions only one model got right,
and McNemar's exact p-value (owl3/evaluation/stats.py).
"""

from __future__ import annotations

import argparse
import json
import sys
import weakref
from pathlib import Path

_TASKS: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()


def task_parsers(sub: argparse._SubParsersAction) -> argparse._SubParsersAction:
    """The TASK subcommands of `owl3 eval` in the command table `sub` (made on first use, with the
    task-independent `compare`): a feature adds its own task here (owl3/demo/evaluate.py: `synthetic`)."""
    if "eval" not in sub.choices:
        e = sub.add_parser(
            "eval",
            help="evaluate a model on a benchmark task",
            description="Evaluate a model on a task; prints a table and a last line of JSON scores.",
        )
        tasks = e.add_subparsers(dest="task", metavar="TASK", required=True)
        _TASKS[e] = tasks
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
    return _TASKS[sub.choices["eval"]]


def add_parser(sub: argparse._SubParsersAction) -> None:
    tasks = task_parsers(sub)
    for name, help_text, data_help in BENCHMARKS:
        p = tasks.add_parser(name, help=help_text, description=help_text + ". See docs/evaluation.md.")
        p.add_argument("--data", required=True, metavar="PATH", help=data_help)
        if name == "mmbench":
            p.add_argument(
                "--no-circular", dest="circular", action="store_false",
                help="ask each question once, options in the file's order (default: CircularEval)",
            )  # fmt: skip
        if name == "distractor":
            p.add_argument(
                "--images",
                default="1,5,10,20,50,100,200,400",
                metavar="N,N,...",
                help="image counts (default: the paper's 1,5,10,20,50,100,200,400)",
            )
            p.add_argument(
                "--variants",
                type=int,
                default=4,
                metavar="V",
                help="prompts per question and count, each with its own distractors, position "
                "and option order; a question counts if all are right (default 4)",
            )
            p.add_argument("--seed", type=int, default=0, help="seed of the draws (default 0)")
            p.add_argument("--plot", metavar="P.png", default=None,
                           help="accuracy against N (default: R.png next to --output)")  # fmt: skip
        if name == "nlvr2":
            p.add_argument(
                "--image-root",
                metavar="DIR",
                default=None,
                help="folder of the -img0/-img1 images (default: the data file's folder)",
            )
        if name in VIDEO_FRAMES:
            p.add_argument("--video-root", metavar="DIR", default=None, help="folder of the videos")
            p.add_argument(
                "--frames",
                type=int,
                default=VIDEO_FRAMES[name],
                metavar="F",
                help=f"frames per video (default {VIDEO_FRAMES[name]}, the official plan)",
            )
        _common_args(p)
        p.set_defaults(func=cmd_eval_benchmark)
    m = tasks.add_parser(
        "merge",
        help="join the --shard i/K results files of one run and score them",
        description="Join the results files of one run's shards (checking they are one run and cover it) "
        "and print its scores, as one process would have.",
    )
    m.add_argument("files", nargs="+", metavar="R.jsonl", help="the shards' --output files")
    m.add_argument("--output", metavar="ALL.jsonl", default=None, help="write the joined records here")
    m.add_argument("--plot", metavar="P.png", default=None, help="distractor: accuracy plot")
    m.add_argument("--json", action="store_true", help="end with one line of JSON holding the scores")
    m.set_defaults(func=cmd_eval_merge)


BENCHMARKS = (
    ("mmbench", "MMBench (CircularEval) with the official owl3 prompt", "MMBench TSV (MMBench_DEV_EN.tsv)"),
    ("distractor", "the paper's distractor-resistance test: 1..N images, 'In Image X, <question>'",
     "MMBench TSV of the questions and distractors, e.g. MMBench_DEV_EN.tsv"),
    ("nlvr2", "NLVR2 with the official two-image prompt",
     "NLVR2 JSON lines (test1.json) or lmms-lab parquet file/folder"),
    ("videomme", "Video-MME (no subtitles), 128 frames", "Video-MME annotations (.parquet, .json or .jsonl)"),
    ("mvbench", "MVBench (20 tasks, start/end bounds), 16 frames", "MVBench folder (json/ and video/)"),
    ("longvideobench", "LongVideoBench validation (no subtitles), 64 frames", "lvb_val.json or its folder"),
)  # fmt: skip
VIDEO_FRAMES = {"videomme": 128, "mvbench": 16, "longvideobench": 64}


def _common_args(p: argparse.ArgumentParser) -> None:
    g = p.add_argument_group("who answers (one of)")
    g.add_argument(
        "--model",
        metavar="DIR",
        default=None,
        help="checkpoint folder in the official layout (default: the built-in model)",
    )
    g.add_argument(
        "--server",
        metavar="URL",
        default=None,
        help="an OpenAI-compatible server's base URL, e.g. http://127.0.0.1:8000/v1",
    )
    g.add_argument("--api-key", metavar="K", default=None, help="the server's API key")
    g.add_argument(
        "--served-model",
        metavar="NAME",
        default=None,
        help="the model name to ask the server for (default: the first it lists)",
    )
    g.add_argument("--dtype", default="float32", help="--model: float32, bfloat16 or float16")
    g.add_argument("--device", default="cpu", help="--model: cpu, cuda, cuda:N, mps or auto")
    r = p.add_argument_group("the run")
    r.add_argument(
        "--output",
        metavar="R.jsonl",
        default=None,
        help="one JSON line per prompt; an existing file of the same run is continued",
    )
    r.add_argument("--limit", type=int, default=None, metavar="N", help="only the first N questions")
    r.add_argument("--batch-size", type=int, default=8, metavar="B", help="--model: prompts at a time (8)")
    r.add_argument("--concurrency", type=int, default=8, metavar="C", help="--server: requests in flight (8)")
    r.add_argument(
        "--shard",
        metavar="i/K",
        default=None,
        help="answer the i-th of K shares of the questions (join with owl3 eval merge)",
    )
    r.add_argument("--max-new-tokens", type=int, default=64, metavar="N", help="answer length limit (64)")
    r.add_argument(
        "--json", action="store_true", help="print only the JSON scores (otherwise the table's last line)"
    )


def _task(args: argparse.Namespace):
    name = args.task
    if name == "mmbench":
        from owl3.evaluation.mmbench import MMBenchTask

        return MMBenchTask(args.data, circular=args.circular)
    if name == "distractor":
        from owl3.errors import Owl3Error
        from owl3.evaluation.distractor import DistractorTask

        try:
            counts = [int(x) for x in args.images.split(",") if x.strip()]
        except ValueError:
            raise Owl3Error(f"--images takes image counts separated by commas, got {args.images!r}") from None
        return DistractorTask(args.data, images=counts, variants=args.variants, seed=args.seed)
    if name == "nlvr2":
        from owl3.evaluation.nlvr2 import NLVR2Task

        return NLVR2Task(args.data, image_root=args.image_root)
    if args.frames < 1:
        from owl3.errors import Owl3Error

        raise Owl3Error(f"--frames must be at least 1, got {args.frames}")
    if name == "videomme":
        from owl3.evaluation.videomme import VideoMMETask

        return VideoMMETask(args.data, video_root=args.video_root, frames=args.frames)
    if name == "mvbench":
        from owl3.evaluation.mvbench import MVBenchTask

        return MVBenchTask(args.data, video_root=args.video_root, frames=args.frames)
    from owl3.evaluation.longvideobench import LongVideoBenchTask

    return LongVideoBenchTask(args.data, video_root=args.video_root, frames=args.frames)


def _backend(args: argparse.Namespace):
    from owl3.errors import Owl3Error
    from owl3.evaluation.backends import LocalBackend, ServerBackend

    if args.server and args.model:
        raise Owl3Error("give either --model (evaluate locally) or --server (evaluate a server), not both")
    if args.server:
        backend = ServerBackend(
            args.server, api_key=args.api_key, model=args.served_model, concurrency=args.concurrency,
            max_new_tokens=args.max_new_tokens,
        )  # fmt: skip
        return backend, backend.name
    from owl3.options import load_pipeline

    pipe = load_pipeline(args)
    # the folder's name, not its path: shards run on machines that keep the checkpoint elsewhere merge
    name = Path(pipe.path).name if pipe.path else "model"
    return LocalBackend(pipe, batch_size=args.batch_size, max_new_tokens=args.max_new_tokens), (
        f"{name} ({args.dtype})"
    )


def _report(summary: dict, *, title: str, plot: str | None, as_json: bool) -> None:
    from owl3.evaluation.records import format_summary

    """The title and the table (not with `as_json`), the plot, then always a last line of JSON scores."""
    if not as_json:
        print(title)
        print(format_summary(summary))
    if plot and summary.get("results"):
        from owl3.evaluation.plot import plot_accuracy

        plot_accuracy(summary, plot, f"owl3 distractor test: {summary.get('model', '')}"[:90])
        if not as_json:
            print(f"plot: {plot}")
    print(json.dumps(summary))


def cmd_eval_benchmark(args: argparse.Namespace) -> int:
    from owl3.evaluation.benchmark import run_benchmark
    from owl3.evaluation.records import parse_shard

    shard = parse_shard(args.shard)
    task = _task(args)
    items = list(task.items())  # reads (and checks) the whole benchmark file before a model is loaded
    backend, model = _backend(args)
    if args.task == "distractor" and args.output:
        sets = Path(args.output).with_suffix(".sets.json")
        try:
            sets.parent.mkdir(parents=True, exist_ok=True)
            sets.write_text(json.dumps({"config": task.config(), "sets": task.sets()}))
        except OSError as e:
            from owl3.errors import Owl3Error

            raise Owl3Error(f"cannot write {sets} ({e.strerror}); pick another --output") from None
    out = run_benchmark(
        task, backend, output=args.output, limit=args.limit, shard=shard, model=model, items=items
    )
    summary = {**out.summary, "model": model, "shard": f"{shard[0]}/{shard[1]}"}
    rate = out.answered / out.seconds if out.seconds > 0 else 0.0
    plot = getattr(args, "plot", None) or (
        str(Path(args.output).with_suffix(".png")) if args.output and args.task == "distractor" else None
    )
    title = (f"{task.name} on {model}: {summary['prompts']} prompts, {summary['questions']} questions "
             f"({out.answered} answered now in {out.seconds:.1f} s, {rate:.2f} prompts/s)")  # fmt: skip
    _report(summary, title=title, plot=plot, as_json=args.json)
    if args.output:
        print(f"records: {args.output}", file=sys.stderr)
    return 0


def cmd_eval_merge(args: argparse.Namespace) -> int:
    from owl3.evaluation.records import ResultsFile, merge, score_records

    header, records = merge(args.files)
    records.sort(key=lambda r: r.get("n", 0))
    summary = {**score_records(header["task"], records), "model": header["config"].get("model", ""),
               "shard": "1/1"}  # fmt: skip
    if args.output:
        if Path(args.output).exists():
            from owl3.errors import Owl3Error

            raise Owl3Error(f"{args.output} exists; merge into a new file")
        out = ResultsFile(args.output, header)
        for r in records:
            out.write(r)
        out.close()
    plot = args.plot or (
        str(Path(args.output).with_suffix(".png")) if args.output and header["task"] == "distractor" else None
    )
    title = f"{header['task']} ({len(args.files)} shards joined): {summary['prompts']} prompts"
    _report(summary, title=title, plot=plot, as_json=args.json)
    return 0


def cmd_eval_compare(args: argparse.Namespace) -> int:
    from owl3.evaluation.stats import compare, format_compare, read_records

    rows = compare(read_records(args.a), read_records(args.b))
    print(format_compare(rows, args.a, args.b))
    if args.json:
        print(json.dumps({"a": args.a, "b": args.b, "rows": [r.to_dict() for r in rows]}))
    return 0
