"""`owl3 eval TASK ...`: the evaluation command. A task's own subcommand lives with its feature and adds
itself through `task_parsers` (`owl3 eval synthetic`: owl3/demo/evaluate.py).

`owl3 eval compare A.jsonl B.jsonl [--json]` compares two such record files question by question (the
same seed asks the same questions): per row both accuracies, the questions only one model got right,
and McNemar's exact p-value (owl3/evaluation/stats.py).
"""

from __future__ import annotations

import argparse
import json
import weakref

_TASKS: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()


def task_parsers(sub: argparse._SubParsersAction) -> argparse._SubParsersAction:
    """The TASK subcommands of `owl3 eval` in the command table `sub` (made on first use, with the
    task-independent `compare`): a feature adds its own task here (owl3/demo/evaluate.py: `synthetic`)."""
    if "eval" not in sub.choices:
        e = sub.add_parser(
            "eval",
            help="evaluate a model on a benchmark task",
            description="Evaluate a model on a task; prints a table (and a JSON line with --json).",
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
    task_parsers(sub)


def cmd_eval_compare(args: argparse.Namespace) -> int:
    from owl3.evaluation.stats import compare, format_compare, read_records

    rows = compare(read_records(args.a), read_records(args.b))
    print(format_compare(rows, args.a, args.b))
    if args.json:
        print(json.dumps({"a": args.a, "b": args.b, "rows": [r.to_dict() for r in rows]}))
    return 0
