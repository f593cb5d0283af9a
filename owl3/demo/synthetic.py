"""`owl3 eval synthetic`: questions about the demo's procedurally drawn world, with 1..N images and videos.

For each question i the target scene and the question are fixed by (seed, i); for each image count N only
the position X of the target and the N-1 random distractor scenes change, so the curve of accuracy against
N measures distraction alone, like the paper's distractor figure (§4.5):
`Image 1: <|image|> ... Image N: <|image|>. In Image X, what colour is the star?`; with N = 1 the prompt
is `<|image|>\\nWhat colour is the star?`. Question kinds cycle, so every row has the same mix. Two more
rows: video questions (`<|video|>\\nWhat appeared after the red square?`, `frames` frames) and "which
image" questions among `which_images` images. Images are never cropped. All scenes come from the
streams `eval:{seed}:...`, which training data (`train:...`) never uses.
"""

from __future__ import annotations

import random
from collections.abc import Iterator, Sequence
from typing import Any

from owl3.demo.questions import (
    ALL_VIDEO_KINDS,
    QA,
    SINGLE_KINDS,
    WHICH_KINDS,
    list_prompt,
    lower_first,
    scene_and_qa,
    video_question,
    which_question,
)
from owl3.demo.world import Scene, random_scene, render
from owl3.errors import Owl3Error
from owl3.evaluation.task import Item, Task

DEFAULT_IMAGES = (1, 5, 20, 50, 100)


class SyntheticTask(Task):
    name = "synthetic"

    def __init__(
        self,
        seed: int = 0,
        images: Sequence[int] = DEFAULT_IMAGES,
        limit: int = 50,
        frames: int = 8,
        which_images: int = 5,
    ) -> None:
        if not images or any(n < 1 for n in images):
            raise Owl3Error(f"image counts must be positive integers, got {list(images)}")
        if limit < 1:
            raise Owl3Error(f"--limit must be at least 1, got {limit}")
        if frames < 0 or frames == 1 or which_images < 0:
            raise Owl3Error(
                "--video-frames must be 0 (no video row) or at least 2, --which-images 0 (no row) or more"
            )
        self.seed, self.images, self.limit = seed, list(dict.fromkeys(images)), limit
        self.frames, self.which_images = frames, which_images

    # ------------------------------------------------------------------ rows
    def groups(self) -> list[str]:
        out = [str(n) for n in self.images]
        if self.frames:
            out.append("video")
        if self.which_images:
            out.append("which")
        return out

    def group_label(self, group: str) -> str:
        if group == "video":
            return f"video ({self.frames} frames)"
        if group == "which":
            return f"which image? ({self.which_images} images)"
        return f"{group} image" + ("" if group == "1" else "s")

    # ------------------------------------------------------------------ items
    def items(self, image_size: int) -> Iterator[Item]:
        for n in self.images:
            for i in range(self.limit):
                yield self._distractor_item(n, i, image_size)
        for i in range(self.limit if self.frames else 0):
            yield self._video_item(i, image_size)
        for i in range(self.limit if self.which_images else 0):
            yield self._which_item(i, image_size)

    def distractor_question(self, n: int, i: int) -> tuple[str, QA, int, list[Scene]]:
        """Question i of the n-image row: (kind, question and answer, 1-based image X, the n scenes)."""
        kind = SINGLE_KINDS[i % len(SINGLE_KINDS)]
        scene, qa = scene_and_qa(random.Random(f"eval:{self.seed}:question:{i}"), kind)
        rng = random.Random(f"eval:{self.seed}:distractors:{n}:{i}")
        x = rng.randint(1, n)
        scenes = [random_scene(rng) for _ in range(n - 1)]
        scenes.insert(x - 1, scene)
        return kind, qa, x, scenes

    def _distractor_item(self, n: int, i: int, size: int) -> Item:
        kind, qa, x, scenes = self.distractor_question(n, i)
        if n == 1:
            prompt = f"<|image|>\n{qa.question}"
        else:
            prompt = list_prompt(n, f"In Image {x}, {lower_first(qa.question)}")
        return Item(
            id=f"images{n}-{i}",
            group=str(n),
            kind=kind,
            prompt=prompt,
            answer=qa.answer,
            media=lambda: ([render(s, size) for s in scenes], []),
            meta={"images": n, "target": x},
        )

    def _video_item(self, i: int, size: int) -> Item:
        kind = ALL_VIDEO_KINDS[i % len(ALL_VIDEO_KINDS)]
        q = video_question(random.Random(f"eval:{self.seed}:video:{i}"), kind, self.frames)
        return Item(
            id=f"video-{i}",
            group="video",
            kind=kind,
            prompt=q.prompt,
            answer=q.answer,
            media=lambda: ([], [q.render_video(size)]),
            meta={"images": self.frames, "frames": self.frames},
        )

    def _which_item(self, i: int, size: int) -> Item:
        kind = WHICH_KINDS[i % len(WHICH_KINDS)]
        q = which_question(random.Random(f"eval:{self.seed}:which:{i}"), self.which_images, kind)
        return Item(
            id=f"which-{i}",
            group="which",
            kind=kind,
            prompt=q.prompt,
            answer=q.answer,
            media=lambda: (q.render_images(size), []),
            meta={"images": self.which_images, "target": q.target},
        )

    # ------------------------------------------------------------------ report
    def summary(self, rows: list[dict[str, Any]]) -> dict[str, Any]:
        out: dict[str, Any] = {"task": self.name, "seed": self.seed, "results": []}
        for r in rows:
            entry = {"questions": r["questions"], "accuracy": r["accuracy"], "ci95": r["ci95"]}
            if r["group"] == "video":
                out["video"] = {"frames": self.frames, **entry}
            elif r["group"] == "which":
                out["which"] = {"images": self.which_images, **entry}
            else:
                out["results"].append({"images": int(r["group"]), **entry})
        return out
