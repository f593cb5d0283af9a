"""`owl3 eval longvideobench --data LongVideoBench/lvb_val.json`: LongVideoBench (validation) without
subtitles, with the official owl3 prompt and frame plan.

The annotation file is the release's `lvb_val.json` (each entry: id, video_path, duration, question,
candidates, correct_choice[, duration_group, question_category]); videos are `{video-root}/{video_path}`
(default root: `videos/` beside the file). 64 frames, the middle frame of 64 equal segments of the whole
video. Prompt, as the official code assembles it (the video inside the question):

    Question: <|video|>\\n{question}\\nOptions: A. ..\\nB. ..\\nAnswer with the option’s letter from the given
    choices directly.

Rows: all, each duration group and each question category the file gives.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

from owl3.errors import Owl3Error
from owl3.evaluation.benchmark import Benchmark
from owl3.evaluation.data import ANSWER_LETTER, LETTERS, fingerprint, read_table
from owl3.evaluation.task import Item
from owl3.evaluation.videos import clip_loader, find_video

FRAMES = 64


class LongVideoBenchTask(Benchmark):
    name = "longvideobench"

    def __init__(
        self, data: str | Path, *, video_root: str | Path | None = None, frames: int = FRAMES
    ) -> None:
        self.path = Path(data)
        if self.path.is_dir():
            self.path = self.path / "lvb_val.json"
        self.rows = read_table(self.path)
        self.root = Path(video_root) if video_root else self.path.parent / "videos"
        self.frames = frames

    def config(self) -> dict[str, Any]:
        return {"data": fingerprint(self.path), "frames": self.frames}

    def items(self, image_size: int | None = None) -> Iterator[Item]:
        for n, row in enumerate(self.rows):
            where = f"{self.path.name} entry {n + 1}"
            try:
                cands, right = [str(c) for c in row["candidates"]], int(row["correct_choice"])
                video, question = str(row["video_path"]), str(row["question"]).replace("<|video|>", "")
            except (KeyError, TypeError, ValueError) as e:
                raise Owl3Error(
                    f"{where}: a field is missing or malformed ({e}); is this lvb_val.json?"
                ) from None
            if not 0 <= right < len(cands):
                raise Owl3Error(f"{where}: correct_choice {right} is not an option")
            choices = dict(zip(LETTERS, cands, strict=False))
            opts = "\n".join(f"{k}. {v}" for k, v in choices.items())
            qid = str(row.get("id") or n)
            group, cat = row.get("duration_group"), row.get("question_category")
            yield Item(
                id=qid,
                group=str(group or "all"),
                kind=str(cat or ""),
                prompt=f"Question: <|video|>\n{question}\nOptions: {opts}\n{ANSWER_LETTER}",
                answer=LETTERS[right],
                media=clip_loader(find_video(self.root, video, where), frames=self.frames),
                question=qid,
                rows=tuple(
                    x for x in (group is not None and f"duration: {group}", cat and f"category: {cat}") if x
                ),  # fmt: skip
                choices=choices,
                scoring="choice",
                frames=self.frames,
            )
