"""Run a task on a loaded pipeline: batched greedy answers, one JSON line per question, a summary.

`evaluate` answers the task's items as one continuous batch (`Owl3Pipeline.chat_many`: `batch_size`
questions in flight, a finished one's slot taking the next at once), writes the records in question order
as soon as they are done (`--output` holds the records of a prefix of the questions if a run is stopped),
and returns a `Report`: per-row and per-kind accuracy and the task's summary object.
It does not load models or parse arguments (see `command.py`) and draws no plots (`plot.py`).
"""

from __future__ import annotations

import json
import time
from collections import defaultdict
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from tqdm import tqdm

from owl3.api import Conversation, Owl3Pipeline
from owl3.errors import Owl3Error
from owl3.evaluation.stats import wilson
from owl3.evaluation.task import Item, Task


@dataclass
class Report:
    task: str
    # {"group", "label", "questions", "correct", "accuracy", "ci95": [lo, hi] (Wilson)} in report order
    rows: list[dict[str, Any]]
    by_kind: dict[str, dict[str, Any]]
    summary: dict[str, Any]  # the task's final JSON object
    seconds: float
    records: list[dict[str, Any]] = field(default_factory=list)


def evaluate(
    task: Task,
    pipe: Owl3Pipeline,
    *,
    batch_size: int = 8,
    max_new_tokens: int = 32,
    output: str | Path | None = None,
    progress: bool = True,
) -> Report:
    if batch_size < 1:
        raise Owl3Error(f"--batch-size must be at least 1, got {batch_size}")
    start = time.perf_counter()
    out = None
    if output is not None:
        path = Path(output)
        path.parent.mkdir(parents=True, exist_ok=True)
        try:
            out = open(path, "w")
        except OSError as e:
            raise Owl3Error(f"cannot write {str(path)!r} ({e.strerror}); pick another --output") from None
    records: list[dict[str, Any]] = []
    items = list(task.items(pipe.config.image_size))  # light: media are rendered as they are asked
    bar = tqdm(total=len(items), desc=task.name, unit="q", disable=not progress, leave=False)

    def conversation(item: Item) -> Conversation:
        images, videos = item.media()
        return Conversation(item.prompt, images=images, videos=videos, cut=item.cut)

    answers = pipe.chat_many(
        (conversation(item) for item in items), in_flight=batch_size, max_new_tokens=max_new_tokens,
        temperature=0.0,
    )  # fmt: skip
    done: dict[int, str] = {}
    try:
        for i, completion in answers:
            done[i] = completion.text
            bar.update(1)
            while len(records) in done:  # records in question order: the file is a prefix of the run
                item = items[len(records)]
                pred = done.pop(len(records))
                rec = {
                    "id": item.id,
                    "group": item.group,
                    "kind": item.kind,
                    **item.meta,
                    "prompt": item.prompt,
                    "prediction": pred,
                    "answer": item.answer,
                    "correct": task.score(pred, item),
                }
                records.append(rec)
                if out is not None:
                    out.write(json.dumps(rec) + "\n")
                    out.flush()
    finally:
        answers.close()
        bar.close()
        if out is not None:
            out.close()

    tally: dict[str, list[int]] = defaultdict(lambda: [0, 0])
    kinds: dict[str, list[int]] = defaultdict(lambda: [0, 0])
    for r in records:
        tally[r["group"]][0] += 1
        tally[r["group"]][1] += int(r["correct"])
        kinds[r["kind"]][0] += 1
        kinds[r["kind"]][1] += int(r["correct"])
    label = getattr(task, "group_label", lambda g: g)
    rows = []
    for g in task.groups():
        n, c = tally[g]
        if n:
            ci = [round(x, 4) for x in wilson(c, n)]
            rows.append(
                {
                    "group": g,
                    "label": label(g),
                    "questions": n,
                    "correct": c,
                    "accuracy": round(c / n, 4),
                    "ci95": ci,
                }
            )
    by_kind = {k: {"questions": n, "accuracy": round(c / n, 4)} for k, (n, c) in sorted(kinds.items())}
    return Report(task.name, rows, by_kind, task.summary(rows), time.perf_counter() - start, records)


def format_table(report: Report) -> str:
    width = max([len(r["label"]) for r in report.rows] + [10])
    lines = [f"{'':<{width}}  questions  correct  accuracy       95% CI"]
    for r in report.rows:
        lo, hi = r["ci95"]
        lines.append(
            f"{r['label']:<{width}}  {r['questions']:>9}  {r['correct']:>7}  {100 * r['accuracy']:>7.1f}%"
            f"  {100 * lo:>5.1f}-{100 * hi:<5.1f}"
        )
    return "\n".join(lines)


def format_kinds(report: Report) -> str:
    return "by kind: " + ", ".join(
        f"{k} {100 * v['accuracy']:.0f}% ({v['questions']})" for k, v in report.by_kind.items()
    )
