"""Results files of the benchmark tasks: one header line, then one JSON line per prompt; resuming, shards,
merging, and the scores computed from the records alone.

The header (`{"owl3_eval": 1, "task", "config", "shard"}`) says what produced the file. A run whose
--output already exists continues it when the header matches (same task, data, options and model) and
refuses otherwise, so two runs are never mixed. A shard `i/K` takes every K-th question (all variants of a
question stay together); `owl3 eval merge` checks the shards belong to one run and cover it, and scores
the union exactly as one process would: scores are a function of the records only (`score_records`).
"""

from __future__ import annotations

import json
import re
from collections import defaultdict
from pathlib import Path
from typing import Any

from owl3.errors import Owl3Error
from owl3.evaluation.stats import wilson

HEADER_KEY = "owl3_eval"


def parse_shard(text: str | None) -> tuple[int, int]:
    """ "i/K" (1 <= i <= K) -> (i, K); None -> (1, 1)."""
    if text is None:
        return 1, 1
    try:
        i, k = (int(x) for x in text.split("/"))
    except ValueError:
        i = k = 0
    if not (k >= 1 and 1 <= i <= k):
        raise Owl3Error(f"--shard takes i/K with 1 <= i <= K (e.g. 2/4), got {text!r}")
    return i, k


def read_results(path: str | Path) -> tuple[dict[str, Any] | None, list[dict[str, Any]]]:
    """(header or None, records) of a results file; a torn last line (a run killed while writing) is
    left out."""
    p = Path(path)
    if not p.is_file():
        raise Owl3Error(f"results file {str(p)!r} not found (write one with owl3 eval TASK --output FILE)")
    header, records = None, []
    lines = p.read_text(encoding="utf-8").splitlines()
    for n, line in enumerate(lines, 1):
        if not line.strip():
            continue
        try:
            rec = json.loads(line)
        except json.JSONDecodeError:
            if n == len(lines):
                break
            raise Owl3Error(f"{p}:{n} is not JSON; is this an owl3 eval results file?") from None
        if not isinstance(rec, dict):
            raise Owl3Error(f"{p}:{n} is not an owl3 eval record")
        if HEADER_KEY in rec:
            header = rec
        else:
            records.append(rec)
    return header, records


class ResultsFile:
    """Appends records to --output, continuing a file of the same run."""

    def __init__(self, path: str | Path, header: dict[str, Any]) -> None:
        self.path = Path(path)
        self.done: dict[str, dict[str, Any]] = {}
        if self.path.exists() and self.path.stat().st_size > 0:
            old, records = read_results(self.path)
            if old is None or old.get("task") != header["task"] or old.get("config") != header["config"]:
                raise Owl3Error(
                    f"{self.path} holds results of another run (task, data, options or model differ); "
                    "pass another --output, or delete it to start over"
                )
            if old.get("shard") != header["shard"]:
                raise Owl3Error(f"{self.path} holds shard {old.get('shard')}, not {header['shard']}")
            self.done = {str(r["id"]): r for r in records if "id" in r}
            self._rewrite(old, list(self.done.values()))  # drops a torn last line
        else:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            self._rewrite(header, [])
        try:
            self.f = open(self.path, "a", encoding="utf-8")
        except OSError as e:
            raise Owl3Error(
                f"cannot write {str(self.path)!r} ({e.strerror}); pick another --output"
            ) from None

    def _rewrite(self, header: dict[str, Any], records: list[dict[str, Any]]) -> None:
        try:
            with open(self.path, "w", encoding="utf-8") as f:
                for rec in [header, *records]:
                    f.write(json.dumps(rec, ensure_ascii=False) + "\n")
        except OSError as e:
            raise Owl3Error(
                f"cannot write {str(self.path)!r} ({e.strerror}); pick another --output"
            ) from None

    def write(self, rec: dict[str, Any]) -> None:
        self.f.write(json.dumps(rec, ensure_ascii=False) + "\n")
        self.f.flush()

    def close(self) -> None:
        self.f.close()


def _row(label: str, n: int, c: int) -> dict[str, Any]:
    return {
        "row": label,
        "questions": n,
        "correct": c,
        "accuracy": round(c / n, 4) if n else 0.0,
        "ci95": [round(x, 4) for x in wilson(c, n)],
    }


def _row_order(labels: list[str]):
    """ "all" first, then rows of one kind ("category: ...") together in order of the kind's first
    appearance, each kind's rows in natural order ("5 images" before "10 images")."""
    kinds: dict[str, int] = {}
    for label in labels:
        kinds.setdefault(label.split(": ", 1)[0] if ": " in label else "", len(kinds))

    def key(label: str) -> tuple:
        if label == "all":
            return (-1, ())
        kind = label.split(": ", 1)[0] if ": " in label else ""
        parts = re.split(r"(\d+)", label)
        return (kinds[kind], tuple((0, int(p), "") if p.isdigit() else (1, 0, p) for p in parts if p))

    return key


def score_records(task: str, records: list[dict[str, Any]]) -> dict[str, Any]:
    """The scores of a task from its records: a question is right iff every variant of it is; rows "all"
    and each label of the questions' `rows`, in order of first appearance."""
    by_q: dict[str, dict[str, Any]] = {}
    rules: dict[str, int] = defaultdict(int)
    # in task order ("n"), whatever order a server answered or shards were merged in
    for r in sorted(records, key=lambda r: r.get("n", 0)):
        q = str(r.get("question") or r["id"])
        entry = by_q.setdefault(q, {"correct": True, "rows": r.get("rows", []), "group": r.get("group")})
        entry["correct"] = entry["correct"] and bool(r["correct"])
        rules[r.get("rule", "exact")] += 1
    tally: dict[str, list[int]] = defaultdict(lambda: [0, 0])
    for q in by_q.values():
        for label in ["all", *q["rows"]]:
            tally[label][0] += 1
            tally[label][1] += int(q["correct"])
    rows = [_row(label, *tally[label]) for label in sorted(tally, key=_row_order(list(tally)))]
    summary: dict[str, Any] = {
        "task": task,
        "prompts": len(records),
        "questions": len(by_q),
        "accuracy": rows[0]["accuracy"] if rows else 0.0,
        "rows": rows,
        "extraction": dict(sorted(rules.items())),
    }
    if task == "distractor":  # accuracy against the number of images, for the table and the plot
        per_n: dict[int, list[int]] = defaultdict(lambda: [0, 0])
        for q in by_q.values():
            n = int(q["group"])
            per_n[n][0] += 1
            per_n[n][1] += int(q["correct"])
        summary["results"] = [
            {"images": n, **{k: v for k, v in _row(str(n), *per_n[n]).items() if k != "row"}}
            for n in sorted(per_n)
        ]
    return summary


def format_summary(summary: dict[str, Any]) -> str:
    width = max([len(r["row"]) for r in summary["rows"]] + [10])
    lines = [f"{'':<{width}}  questions  correct  accuracy       95% CI"]
    for r in summary["rows"]:
        lo, hi = r["ci95"]
        lines.append(
            f"{r['row']:<{width}}  {r['questions']:>9}  {r['correct']:>7}  {100 * r['accuracy']:>7.1f}%"
            f"  {100 * lo:>5.1f}-{100 * hi:<5.1f}"
        )
    rules = ", ".join(f"{k} {v}" for k, v in summary["extraction"].items())
    lines.append(f"answers read by rule: {rules}")
    return "\n".join(lines)


def merge(paths: list[str | Path]) -> tuple[dict[str, Any], list[dict[str, Any]]]:
    """(header of the whole run, records) of the shard files of one run; refuses files of other runs,
    a shard twice, a missing shard, or a question answered in two shards."""
    if not paths:
        raise Owl3Error("give the shard files to merge")
    headers, records = [], []
    for p in paths:
        h, recs = read_results(p)
        if h is None:
            raise Owl3Error(f"{p} has no owl3 eval header; merge the --output files of a benchmark task")
        headers.append((p, h))
        records.extend(recs)
    _, first = headers[0]
    for p, h in headers[1:]:
        if h.get("task") != first.get("task") or h.get("config") != first.get("config"):
            raise Owl3Error(f"{p} is from another run than {paths[0]} (task, data, options or model differ)")
    shards = [tuple(h.get("shard", [1, 1])) for _, h in headers]
    k = shards[0][1]
    if any(s[1] != k for s in shards) or sorted(s[0] for s in shards) != list(range(1, k + 1)):
        have = ", ".join(f"{i}/{kk}" for i, kk in shards)
        raise Owl3Error(f"the files hold shards {have}; merge each of 1/{k} .. {k}/{k} exactly once")
    seen: set[str] = set()
    for r in records:
        if str(r["id"]) in seen:
            raise Owl3Error(f"prompt {r['id']!r} is in two files; were the same shards given twice?")
        seen.add(str(r["id"]))
    return {**first, "shard": [1, 1]}, records


__all__ = ["ResultsFile", "format_summary", "merge", "parse_shard", "read_results", "score_records"]
