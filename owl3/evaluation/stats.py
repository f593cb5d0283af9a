"""How sure a score is: Wilson intervals for one model's accuracy, and a paired comparison of two models
that answered the same questions (`owl3 eval compare A.jsonl B.jsonl`).

Two runs of `owl3 eval synthetic` with the same seed and options ask the same questions (same ids), as
do two runs of a benchmark task on the same data (paired by question, after CircularEval), so
their difference is best judged question by question: only the questions one model gets right and the
other wrong carry information, and McNemar's exact test asks whether those split evenly. That is far
more sensitive than comparing two accuracies as if they were independent samples.
"""

from __future__ import annotations

import json
import math
from collections import defaultdict
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from owl3.errors import Owl3Error

Z95 = 1.959963984540054  # the two-sided 95% normal quantile


def wilson(correct: int, n: int, z: float = Z95) -> tuple[float, float]:
    """The Wilson score interval of a proportion correct / n (95% by default); (0, 1) when n is 0."""
    if n <= 0:
        return 0.0, 1.0
    p = correct / n
    centre = (p + z * z / (2 * n)) / (1 + z * z / n)
    half = z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / (1 + z * z / n)
    return max(0.0, centre - half), min(1.0, centre + half)


def mcnemar_p(only_a: int, only_b: int) -> float:
    """Exact two-sided McNemar p-value: under "no difference" each discordant question is a fair coin."""
    n = only_a + only_b
    if n == 0:
        return 1.0
    k = min(only_a, only_b)
    tail = sum(math.comb(n, i) for i in range(k + 1)) / 2**n
    return min(1.0, 2 * tail)


@dataclass(frozen=True)
class Paired:
    """One row of a paired comparison (a report row, or "all")."""

    group: str
    questions: int  # asked to both
    a: int  # right by A
    b: int  # right by B
    only_a: int
    only_b: int

    @property
    def p(self) -> float:
        return mcnemar_p(self.only_a, self.only_b)

    def to_dict(self) -> dict[str, Any]:
        n = max(self.questions, 1)
        return {
            "group": self.group, "questions": self.questions, "accuracy_a": round(self.a / n, 4),
            "accuracy_b": round(self.b / n, 4), "only_a": self.only_a, "only_b": self.only_b,
            "p": round(self.p, 4),
        }  # fmt: skip


def read_records(path: str | Path) -> dict[str, dict[str, Any]]:
    """The per-question records of an `owl3 eval ... --output` file, by id; a benchmark task's prompts
    are folded into their questions (right only if every variant is), by question id."""
    p = Path(path)
    if not p.is_file():
        raise Owl3Error(f"records file {str(p)!r} not found (write one with owl3 eval ... --output FILE)")
    out: dict[str, dict[str, Any]] = {}
    for i, line in enumerate(p.read_text().splitlines(), 1):
        if not line.strip():
            continue
        try:
            rec = json.loads(line)
            if "owl3_eval" in rec:  # the header of a benchmark task's results file
                continue
            key, group, right = str(rec["id"]), str(rec["group"]), rec["correct"]
        except (json.JSONDecodeError, KeyError, TypeError):
            raise Owl3Error(
                f"{p}:{i} is not an owl3 eval record (a JSON object with id, group and correct)"
            ) from None
        if rec.get("question"):  # a benchmark prompt: pair by question, right only if every variant is
            key = str(rec["question"])
            if key in out:
                right = out[key]["correct"] and bool(right)
        out[key] = {**rec, "group": group, "correct": bool(right)}
    if not out:
        raise Owl3Error(f"records file {str(p)!r} holds no records")
    return out


def compare(a: dict[str, dict[str, Any]], b: dict[str, dict[str, Any]]) -> list[Paired]:
    """Paired rows per group (in A's order of first appearance) and a last row "all", over the ids both
    files hold. Raises if they share none (different seeds or tasks)."""
    shared = [k for k in a if k in b]
    if not shared:
        raise Owl3Error(
            "the two records files share no question ids: compare runs of one task with the same --seed"
        )
    tally: dict[str, list[int]] = defaultdict(lambda: [0, 0, 0, 0, 0])  # n, a, b, only_a, only_b
    for k in shared:
        ra, rb = a[k]["correct"], b[k]["correct"]
        for g in (a[k]["group"], "all"):
            t = tally[g]
            t[0] += 1
            t[1] += ra
            t[2] += rb
            t[3] += ra and not rb
            t[4] += rb and not ra
    order = [*dict.fromkeys(a[k]["group"] for k in shared), "all"]
    return [Paired(g, *tally[g]) for g in order]


def format_compare(rows: list[Paired], name_a: str = "A", name_b: str = "B") -> str:
    lines = [
        f"A = {name_a}",
        f"B = {name_b}",
        f"{'row':<8} {'questions':>9} {'A':>7} {'B':>7} {'B-A':>7} {'only A':>7} {'only B':>7} {'p':>7}",
    ]
    for r in rows:
        n = max(r.questions, 1)
        lines.append(
            f"{r.group:<8} {r.questions:>9} {100 * r.a / n:>6.1f}% {100 * r.b / n:>6.1f}% "
            f"{100 * (r.b - r.a) / n:>+7.1f} {r.only_a:>7} {r.only_b:>7} {r.p:>7.3f}"
        )
    lines.append(
        "p: exact McNemar test on the questions only one model got right (small p: unlikely by chance)"
    )
    return "\n".join(lines)


__all__ = ["Paired", "compare", "format_compare", "mcnemar_p", "read_records", "wilson"]
