"""What an evaluation task is: a list of items (prompt + media + reference answer) and a scorer.

A task builds its items lazily (media are rendered or read only when a batch needs them), groups them
into the rows of its report (`Item.group`), and says whether a prediction is right. It knows nothing of
models or batching: that is the runner's job (`owl3.evaluation.runner`).
"""

from __future__ import annotations

import re
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any

from PIL import Image

Media = tuple[list[Image.Image], list[list[Image.Image]]]  # (images, videos as frame lists)


@dataclass
class Item:
    id: str
    group: str  # the report row this item counts in
    kind: str  # the question type, for the per-kind breakdown
    prompt: str  # the user turn, with <|image|> / <|video|> placeholders
    answer: str
    media: Callable[[], Media]  # renders/reads the media on demand
    cut: bool = False  # crop images into the official grid (only sensible for real photos)
    meta: dict[str, Any] = field(default_factory=dict)
    # benchmark tasks (owl3/evaluation/benchmark.py): the question this prompt is a variant of (a question
    # is right only if all its variants are), which variant, the report rows the question counts in besides
    # "all", and how the answer is read: "choice" (an option letter out of `choices`) or "yesno"
    question: str = ""
    variant: int = 0
    rows: tuple[str, ...] = ()
    choices: dict[str, str] | None = None
    scoring: str = "exact"
    frames: int | None = None  # for a server: video frames each clip holds (sent as num_frames)


def normalize(text: str) -> str:
    """Lower case, single spaces, no trailing full stop: how short-sentence answers are compared."""
    return re.sub(r"\s+", " ", text.strip().lower()).rstrip(" .!")


class Task:
    """Base class: subclasses set `name` and implement `items`."""

    name = "task"

    def items(self, image_size: int) -> Iterator[Item]:
        """The items in report order; `image_size` is the model's, for tasks that draw their images."""
        raise NotImplementedError

    def groups(self) -> list[str]:
        """Report rows in order."""
        raise NotImplementedError

    def score(self, prediction: str, item: Item) -> bool:
        """Exact match after `normalize` (override for looser tasks)."""
        return normalize(prediction) == normalize(item.answer)

    def summary(self, rows: list[dict[str, Any]]) -> dict[str, Any]:
        """The task's final JSON object from the per-group rows (override to shape it)."""
        return {"task": self.name, "results": rows}
