"""`owl3 eval mmbench --data MMBench_DEV_EN.tsv`: MMBench with the official owl3 prompt and CircularEval.

The TSV is MMBench's public format (VLMEvalKit's and OpenCompass's): columns index, question, hint, A, B,
C, D (empty where a question has fewer options), answer, category, l2-category, image (base64; in
VLMEvalKit's files a short number instead refers to the row with that index). Prompt, as the official
evaluation writes it (the typographic apostrophe included):

    <|image|>Context: {hint or N/A}\\nQuestion: {question}\\nOptions: A. ..\\nB. ..\\nAnswer with the option’s
    letter from the given choices directly.

CircularEval as VLMEvalKit scores it: when the TSV already holds the rotated copies (index + k * 1e6),
its rows are grouped by index % 1e6; when it does not, the k rotations of each question's k options are
built here (numbered the same way). A question is right only if every rotation is. Rows: all, each
`category` and each `l2-category`. The lone image is cropped into the official grid (cut), as in the paper.
"""

from __future__ import annotations

import threading
from collections import OrderedDict
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from owl3.errors import Owl3Error
from owl3.evaluation.benchmark import Benchmark
from owl3.evaluation.data import (
    ANSWER_LETTER,
    LETTERS,
    blank,
    fingerprint,
    load_image,
    options_text,
    read_tsv,
    rotate,
)
from owl3.evaluation.task import Item

IMAGE_CACHE = 512  # decoded images kept
CIRCULAR = 1_000_000  # VLMEvalKit: rotated copies of question q have index q + k * 1e6


@dataclass(frozen=True)
class Row:
    index: int
    question: str
    hint: str
    options: list[str]
    answer: int  # position in options
    category: str
    l2: str


class MMBenchFile:
    """The rows of an MMBench TSV, and the image of any index."""

    def __init__(self, path: str | Path) -> None:
        self.path = Path(path)
        raw = read_tsv(path)
        if not raw:
            raise Owl3Error(f"{path} holds no rows")
        missing = {"index", "question", "image", "A", "B"} - set(raw[0])
        if missing:
            raise Owl3Error(f"{path} is not an MMBench TSV: no column {', '.join(sorted(missing))}")
        if "answer" not in raw[0] or all(blank(r.get("answer")) for r in raw):
            raise Owl3Error(f"{path} has no answers (a test split?); evaluate the dev split")
        self.rows: list[Row] = []
        self._images: dict[int, str] = {}
        self._cache: OrderedDict[int, Any] = OrderedDict()
        self._lock = threading.Lock()
        for n, r in enumerate(raw, 2):
            try:
                index = int(float(r["index"]))
            except ValueError:
                raise Owl3Error(f"{path}:{n}: index {r['index']!r} is not a number") from None
            self._images[index] = r["image"]
            options = [r[k].strip() for k in LETTERS if k in r and not blank(r[k])]
            answer = (r.get("answer") or "").strip()
            if answer not in LETTERS[: len(options)]:
                raise Owl3Error(f"{path}:{n}: answer {answer!r} is not one of the row's option letters")
            self.rows.append(
                Row(index, r["question"].strip(), "" if blank(r.get("hint")) else r["hint"].strip(), options,
                    LETTERS.index(answer), (r.get("category") or "").strip(),
                    (r.get("l2-category") or "").strip())
            )  # fmt: skip
        self.has_circular = any(r.index >= CIRCULAR for r in self.rows)

    def image(self, index: int) -> Any:
        """The decoded image of a row (the last IMAGE_CACHE decoded ones are kept: distractor prompts
        reuse them)."""
        with self._lock:
            if index in self._cache:
                self._cache.move_to_end(index)
                return self._cache[index]
        value = self._images.get(index, "")
        if len(value) <= 64 and value.strip().isdigit():  # a reference to another row's image
            value = self._images.get(int(value), "")
        img = load_image(value, f"{self.path.name} index {index}")
        with self._lock:
            self._cache[index] = img
            while len(self._cache) > IMAGE_CACHE:
                self._cache.popitem(last=False)
        return img

    def image_key(self, index: int) -> str:
        """Equal for rows that share one image (the same bytes or a reference)."""
        value = self._images.get(index, "")
        if len(value) <= 64 and value.strip().isdigit():
            value = self._images.get(int(value), "")
        return value[:64] + value[-64:] + str(len(value))

    def main_rows(self) -> list[Row]:
        return [r for r in self.rows if r.index < CIRCULAR]


def mmbench_prompt(row: Row, choices: dict[str, str]) -> str:
    return (
        f"<|image|>Context: {row.hint or 'N/A'}\nQuestion: {row.question}\n"
        f"Options: {options_text(choices)}\n{ANSWER_LETTER}"
    )


class MMBenchTask(Benchmark):
    name = "mmbench"

    def __init__(self, data: str | Path, *, circular: bool = True) -> None:
        self.data = MMBenchFile(data)
        self.circular = circular

    def config(self) -> dict[str, Any]:
        return {"data": fingerprint(self.data.path), "circular": self.circular}

    def _item(self, row: Row, q: int, variant: int, choices: dict[str, str], answer: str, main: Row) -> Item:
        img = self.data.image
        return Item(
            id=str(row.index + (variant * CIRCULAR if row.index < CIRCULAR else 0)),
            group=main.l2 or "all",
            kind=main.category,
            prompt=mmbench_prompt(row, choices),
            answer=answer,
            media=lambda: ([img(row.index)], []),
            cut=True,
            question=str(q),
            variant=variant,
            rows=tuple(x for x in (f"category: {main.category}" if main.category else "",
                                   f"l2-category: {main.l2}" if main.l2 else "") if x),
            choices=choices,
            scoring="choice",
        )  # fmt: skip

    def items(self, image_size: int | None = None) -> Iterator[Item]:
        mains = {r.index: r for r in self.data.main_rows()}
        if self.circular and self.data.has_circular:
            groups: dict[int, list[Row]] = {}
            for r in self.data.rows:
                groups.setdefault(r.index % CIRCULAR, []).append(r)
            for q, rows in groups.items():
                main = mains.get(q, rows[0])
                for r in sorted(rows, key=lambda r: r.index):
                    choices = dict(zip(LETTERS, r.options, strict=False))
                    yield self._item(r, q, r.index // CIRCULAR, choices, LETTERS[r.answer], main)
            return
        for r in mains.values():
            for v in range(len(r.options) if self.circular else 1):
                choices, answer = rotate(r.options, r.answer, v)
                yield self._item(r, r.index, v, choices, answer, r)
