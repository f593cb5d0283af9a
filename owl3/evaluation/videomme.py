"""`owl3 eval videomme --data videomme/test-00000-of-00001.parquet --video-root data/`: Video-MME without
subtitles, with the official owl3 prompt and frame plan.

Annotations in lmms-lab/Video-MME's form (parquet, or the same rows as JSON / JSONL): videoID, question_id,
duration (short / medium / long), domain, sub_category, task_type, question, options (["A. ...", ...]),
answer (a letter). Videos: `{video-root}/{videoID}.mp4` (default root: `data/` beside the annotations, else
their folder). 128 frames, the middle frame of 128 equal segments. Prompt:

    <|video|>\\nQuestion: {question}\\nOptions: A. ..\\nB. ..\\nAnswer with the option’s letter from the
    given choices directly.

Rows: all, each duration, each task type. (The official scorer takes the first capital A-D anywhere in
the answer and "A" when there is none; owl3 reads answers with its own rules, see answers.py.)
"""

from __future__ import annotations

import re
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from owl3.errors import Owl3Error
from owl3.evaluation.benchmark import Benchmark
from owl3.evaluation.data import ANSWER_LETTER, fingerprint, read_table
from owl3.evaluation.task import Item
from owl3.evaluation.videos import clip_loader, find_video

FRAMES = 128


def parse_options(options: Any, where: str) -> dict[str, str]:
    """["A. x", "B. y"] (or its string form) -> {"A": "x", "B": "y"}."""
    if isinstance(options, str):
        options = [o for o in options.strip("[]").split("\n") if o.strip()] if "\n" in options else \
            re.findall(r"'([A-J]\..*?)'(?:,|\s|$)", options)  # fmt: skip
    out = {}
    for o in options or []:
        m = re.match(r"^\s*\(?([A-J])[.)]\s*(.*)$", str(o), flags=re.S)
        if not m:
            raise Owl3Error(f'{where}: option {o!r} does not start with a letter ("A. ...")')
        out[m.group(1)] = m.group(2).strip()
    if len(out) < 2:
        raise Owl3Error(f"{where}: fewer than two options")
    return out


class VideoMMETask(Benchmark):
    name = "videomme"

    def __init__(
        self, data: str | Path, *, video_root: str | Path | None = None, frames: int = FRAMES
    ) -> None:
        self.path = Path(data)
        self.rows = read_table(self.path)
        base = self.path if self.path.is_dir() else self.path.parent
        self.root = Path(video_root) if video_root else (base / "data" if (base / "data").is_dir() else base)
        self.frames = frames

    def config(self) -> dict[str, Any]:
        return {"data": fingerprint(self.path), "frames": self.frames}

    def items(self, image_size: int | None = None) -> Iterator[Item]:
        for n, row in enumerate(self.rows):
            where = f"{self.path.name} row {n + 1}"
            try:
                vid, question, answer = (
                    str(row["videoID"]),
                    str(row["question"]).strip(),
                    str(row["answer"]).strip(),
                )
            except KeyError as e:
                raise Owl3Error(
                    f"{where}: no {e.args[0]!r} field; is this Video-MME's annotation file?"
                ) from None
            choices = parse_options(row.get("options"), where)
            if answer not in choices:
                raise Owl3Error(f"{where}: answer {answer!r} is not one of the options")
            qid = str(row.get("question_id") or f"{vid}-{n}")
            opts = "\n".join(f"{k}. {v}" for k, v in choices.items())
            duration, ttype = row.get("duration"), row.get("task_type")
            yield Item(
                id=qid,
                group=str(duration or "all"),
                kind=str(ttype or ""),
                prompt=f"<|video|>\nQuestion: {question}\nOptions: {opts}\n{ANSWER_LETTER}",
                answer=answer,
                media=clip_loader(find_video(self.root, vid, where), frames=self.frames),
                question=qid,
                rows=tuple(
                    x for x in (duration and f"duration: {duration}", ttype and f"task type: {ttype}") if x
                ),
                choices=choices,
                scoring="choice",
                frames=self.frames,
            )
