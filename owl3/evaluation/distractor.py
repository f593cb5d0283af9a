"""`owl3 eval distractor --data MMBench_DEV_EN.tsv --images 1,5,10,20,50,100,200,400`: the paper's
distractor-resistance benchmark (mPLUG-Owl3 §4.5), which has no public code.

For each MMBench question and each image count N: N-1 distractor images drawn from other questions (never
the question's own image, also not when MMBench gives it to several questions), the true image at a random
position X, and the prompt

    Image 1: <|image|> Image 2: <|image|> ... Image N: <|image|>. In Image X, {question}
    [Context: {hint}]
    Options: A. ..\\nB. ..
    Answer with the option’s letter from the given choices directly.

`--variants V` (default 4) prompts per question and N, each with its own distractors, its own X and its own
option order (the options rotated by the variant number, as CircularEval does); a question counts only if
every variant is right. Images are never cropped (a multi-image prompt), at every N. Everything drawn is a
function of (--seed, question, N, variant) alone, so a run is reproducible and a shard draws what the
whole run draws; each record holds its draw (`image_indices`, `target`, `rotation`), and the command saves
all draws next to --output as R.sets.json.
"""

from __future__ import annotations

import random
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from owl3.errors import Owl3Error
from owl3.evaluation.benchmark import Benchmark
from owl3.evaluation.data import ANSWER_LETTER, fingerprint, options_text, rotate
from owl3.evaluation.mmbench import MMBenchFile, Row
from owl3.evaluation.task import Item

PAPER_COUNTS = (1, 5, 10, 20, 50, 100, 200, 400)


def distractor_prompt(n: int, x: int, row: Row, choices: dict[str, str]) -> str:
    images = " ".join(f"Image {i}: <|image|>" for i in range(1, n + 1))
    context = f"Context: {row.hint}\n" if row.hint else ""
    return (
        f"{images}. In Image {x}, {row.question}\n{context}Options: {options_text(choices)}\n{ANSWER_LETTER}"
    )


class DistractorTask(Benchmark):
    name = "distractor"

    def __init__(
        self, data: str | Path, *, images: list[int] | tuple[int, ...] = PAPER_COUNTS, variants: int = 4,
        seed: int = 0,
    ) -> None:  # fmt: skip
        if variants < 1:
            raise Owl3Error(f"--variants must be at least 1, got {variants}")
        if not images or any(n < 1 for n in images):
            raise Owl3Error(f"--images takes positive image counts, got {images}")
        self.data = MMBenchFile(data)
        self.counts, self.variants, self.seed = sorted(set(images)), variants, seed
        self.questions = self.data.main_rows()
        # one representative row per distinct image: the pool distractors are drawn from
        first: dict[str, int] = {}
        for r in self.questions:
            first.setdefault(self.data.image_key(r.index), r.index)
        self.pool = sorted(first.values())
        self.key_of = {r.index: self.data.image_key(r.index) for r in self.questions}
        if max(self.counts) - 1 > len(self.pool) - 1:
            raise Owl3Error(
                f"{max(self.counts)} images per prompt need {max(self.counts) - 1} distractors, but the file "
                f"has {len(self.pool)} distinct images; use smaller --images"
            )

    def config(self) -> dict[str, Any]:
        return {
            "data": fingerprint(self.data.path),
            "images": self.counts,
            "variants": self.variants,
            "seed": self.seed,
        }

    def unit(self, item: Item) -> str:
        """--limit and shards count MMBench questions: each is asked at every N."""
        return item.question.split("@")[0]

    def draw(self, row: Row, n: int, variant: int) -> tuple[list[int], int]:
        """(the MMBench indices of the N images in prompt order, X): a function of the seed, the question,
        N and the variant only."""
        rng = random.Random(f"owl3-distractor:{self.seed}:{row.index}:{n}:{variant}")
        own = self.key_of[row.index]
        others = [i for i in self.pool if self.key_of[i] != own]
        picked = rng.sample(others, n - 1)
        x = rng.randint(1, n)
        return picked[: x - 1] + [row.index] + picked[x - 1 :], x

    def items(self, image_size: int | None = None) -> Iterator[Item]:
        img = self.data.image
        for n in self.counts:
            for row in self.questions:
                for v in range(self.variants):
                    indices, x = self.draw(row, n, v)
                    rot = v % len(row.options)
                    choices, answer = rotate(row.options, row.answer, rot)
                    yield Item(
                        id=f"{row.index}@{n}#{v}",
                        group=str(n),
                        kind=row.category,
                        prompt=distractor_prompt(n, x, row, choices),
                        answer=answer,
                        media=lambda indices=indices: ([img(i) for i in indices], []),
                        cut=False,
                        meta={"images": n, "target": x, "rotation": rot, "image_indices": indices},
                        question=f"{row.index}@{n}",
                        variant=v,
                        rows=(f"images: {n}",),
                        choices=choices,
                        scoring="choice",
                    )

    def sets(self) -> list[dict[str, Any]]:
        """Every draw, for the record: question, N, variant, X, image indices, option rotation."""
        out = []
        for n in self.counts:
            for row in self.questions:
                for v in range(self.variants):
                    indices, x = self.draw(row, n, v)
                    out.append({"index": row.index, "images": n, "variant": v, "target": x,
                                "rotation": v % len(row.options), "image_indices": indices})  # fmt: skip
        return out
