"""Running a benchmark task: its prompts through a backend, one record per prompt, scores from the records.

`run_benchmark` picks the questions (`limit`, then the shard's share), skips the prompts an existing
results file already answered, sends the rest to the backend (batched or concurrent), reads each answer
(`answers.py`), writes each record as soon as it arrives, and returns the scores of everything in the file.
It loads no model and parses no arguments (`command.py`).
"""

from __future__ import annotations

import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from tqdm import tqdm

from owl3.errors import Owl3Error
from owl3.evaluation.answers import METHOD, extract_choice, extract_yes_no
from owl3.evaluation.records import ResultsFile, score_records
from owl3.evaluation.task import Item, Task


class Benchmark(Task):
    """A task read from a benchmark's files. Subclasses set `name`, implement `items()` (every prompt, in
    order, variants of a question next to each other) and `config()` (what the header records)."""

    def config(self) -> dict[str, Any]:
        raise NotImplementedError

    def groups(self) -> list[str]:
        return []

    def unit(self, item: Item) -> str:
        """What --limit counts and shards split: the question (all its variants together)."""
        return item.question or item.id


def read_answer(prediction: str, item: Item) -> tuple[str | None, str, bool]:
    """(extracted answer, rule, correct) of one prediction."""
    if item.scoring == "choice":
        got, rule = extract_choice(prediction, item.choices or {})
    elif item.scoring == "yesno":
        got, rule = extract_yes_no(prediction)
    else:
        from owl3.evaluation.task import normalize

        got, rule = normalize(prediction), "exact"
        return got, rule, got == normalize(item.answer)
    return got, rule, got is not None and got == item.answer


def select(items: list[Item], limit: int | None, shard: tuple[int, int], unit=None) -> list[Item]:
    """The first `limit` questions (all their variants), then every K-th question from the i-th;
    `unit(item)` names an item's question (default: item.question)."""
    if limit is not None and limit < 1:
        raise Owl3Error(f"--limit must be at least 1, got {limit}")
    unit = unit or (lambda it: it.question or it.id)
    order: dict[str, int] = {}
    for it in items:
        order.setdefault(unit(it), len(order))
    i, k = shard
    keep = []
    for it in items:
        j = order[unit(it)]
        if (limit is None or j < limit) and j % k == i - 1:
            keep.append(it)
    return keep


@dataclass
class Outcome:
    summary: dict[str, Any]
    records: list[dict[str, Any]]
    answered: int  # prompts answered in this run (not taken from a file being continued)
    seconds: float


def run_benchmark(
    task: Benchmark,
    backend: Any,
    *,
    output: str | Path | None = None,
    limit: int | None = None,
    shard: tuple[int, int] = (1, 1),
    model: str = "",
    progress: bool | None = None,
    items: list[Item] | None = None,
) -> Outcome:
    """`items`: task.items() already listed (the command lists them before loading a model, so a bad
    benchmark file fails at once)."""
    start = time.perf_counter()
    items = list(task.items()) if items is None else items
    if not items:
        raise Owl3Error(f"{task.name}: the data holds no questions")
    positions = {it.id: n for n, it in enumerate(items)}
    if len(positions) != len(items):
        raise Owl3Error(f"{task.name}: two prompts share an id; check the benchmark file for repeated rows")
    items = select(items, limit, shard, task.unit)
    header = {
        "owl3_eval": 1,
        "task": task.name,
        "config": {
            **task.config(),
            "limit": limit,
            "model": model,
            "extraction": METHOD,
            "max_new_tokens": getattr(backend, "max_new_tokens", None),
        },
        "shard": list(shard),
    }
    out = ResultsFile(output, header) if output is not None else None
    records = list(out.done.values()) if out else []
    todo = [it for it in items if out is None or it.id not in out.done]
    if progress is None:
        progress = sys.stderr.isatty()
    bar = tqdm(
        total=len(items), initial=len(items) - len(todo), desc=task.name, unit="prompt",
        disable=not progress, dynamic_ncols=True,
    )  # fmt: skip
    answered = 0
    try:
        for item, pred in backend.answer(todo):
            got, rule, right = read_answer(pred, item)
            rec = {
                "id": item.id, "n": positions[item.id], "question": item.question or item.id,
                "variant": item.variant, "group": item.group, "rows": list(item.rows), "kind": item.kind,
                **item.meta, "prompt": item.prompt, "prediction": pred, "extracted": got, "rule": rule,
                "answer": item.answer, "correct": right,
            }  # fmt: skip
            records.append(rec)
            if out is not None:
                out.write(rec)
            answered += 1
            bar.update(1)
    finally:
        bar.close()
        if out is not None:
            out.close()
    summary = score_records(task.name, records)
    return Outcome(summary, records, answered, time.perf_counter() - start)
