"""`owl3 eval mvbench --data MVBench/`: MVBench (20 temporal tasks) with the official owl3 prompt and frame
plan.

The folder is OpenGVLab/MVBench's layout: `json/{task}.json` (each a list of {video, question, candidates,
answer[, start, end]}) and `video/{source}/...`, the source folder of each task as in the table below (the
official evaluation's). Tasks whose JSON is missing are left out. 16 frames, by the official rule: within
[start, end] seconds for the tasks that give bounds, else the whole video, the frame
`int(start + seg/2 + round(seg * i))` with seg = (end - start) / 16 in frame numbers; episodic_reasoning's
"videos" are folders of JPEG frames at 3 fps, numbered from 1. Prompt:

    <|video|>\\nQuestion: {question}\\nOptions:\\nA. ..\\nB. ..\\nAnswer with the option’s letter from
    the given choices directly.

Rows: all, and each task.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from owl3.errors import Owl3Error
from owl3.evaluation.benchmark import Benchmark
from owl3.evaluation.data import ANSWER_LETTER, LETTERS, fingerprint
from owl3.evaluation.task import Item
from owl3.evaluation.videos import clip_loader, find_video

FRAMES = 16
FRAME_FOLDER_FPS = 3
# task -> (video folder under video/, folder of JPEG frames instead of a file, has start/end bounds)
TASKS: dict[str, tuple[str, bool, bool]] = {
    "action_sequence": ("star/Charades_v1_480", False, True),
    "action_prediction": ("star/Charades_v1_480", False, True),
    "action_antonym": ("ssv2_video", False, False),
    "fine_grained_action": ("Moments_in_Time_Raw/videos", False, False),
    "unexpected_action": ("FunQA_test/test", False, False),
    "object_existence": ("clevrer/video_validation", False, False),
    "object_interaction": ("star/Charades_v1_480", False, True),
    "object_shuffle": ("perception/videos", False, False),
    "moving_direction": ("clevrer/video_validation", False, False),
    "action_localization": ("sta/sta_video", False, True),
    "scene_transition": ("scene_qa/video", False, False),
    "action_count": ("perception/videos", False, False),
    "moving_count": ("clevrer/video_validation", False, False),
    "moving_attribute": ("clevrer/video_validation", False, False),
    "state_change": ("perception/videos", False, False),
    "fine_grained_pose": ("nturgbd", False, False),
    "character_order": ("perception/videos", False, False),
    "egocentric_navigation": ("vlnqa", False, False),
    "episodic_reasoning": ("tvqa/frames_fps3_hq", True, True),
    "counterfactual_inference": ("clevrer/video_validation", False, False),
}


def bounded_indices(
    n: int, fps: float, last: int, bound: tuple[float, float] | None, first: int = 0
) -> list[int]:
    """The official MVBench frame numbers: n frames, middle of n segments of [start, end] (whole video
    without a bound), `last` the highest frame number, `first` the lowest."""
    start, end = bound if bound else (-100000.0, 100000.0)
    lo = max(first, round(start * fps))
    hi = min(round(end * fps), last)
    seg = (hi - lo) / n
    return [int(lo + seg / 2 + round(seg * i)) for i in range(n)]


def _video_indices(n: int, bound: tuple[float, float] | None):
    def indices(path: Path) -> list[int]:
        from owl3.processing.video import video_info

        info = video_info(path)
        return bounded_indices(n, info.fps, info.n_frames - 1, bound)

    return indices


def _frame_folder(folder: Path, n: int, bound: tuple[float, float] | None):
    def media() -> tuple[list, list[list[Any]]]:
        from PIL import Image

        count = len(list(folder.iterdir()))
        frames = []
        for i in bounded_indices(n, FRAME_FOLDER_FPS, count, bound, first=1):
            p = folder / f"{i:05d}.jpg"
            try:
                frames.append(Image.open(p).convert("RGB"))
            except OSError:
                raise Owl3Error(f"frame {p} is missing or unreadable") from None
        return [], [frames]

    return media


class MVBenchTask(Benchmark):
    name = "mvbench"

    def __init__(
        self, data: str | Path, *, video_root: str | Path | None = None, frames: int = FRAMES
    ) -> None:
        self.path = Path(data)
        if not (self.path / "json").is_dir():
            raise Owl3Error(f"{data} is not MVBench's folder: it has no json/ subfolder (json/{{task}}.json)")
        self.root = Path(video_root) if video_root else self.path / "video"
        self.frames = frames
        self.tasks = {
            t: self.path / "json" / f"{t}.json" for t in TASKS if (self.path / "json" / f"{t}.json").is_file()
        }
        if not self.tasks:
            raise Owl3Error(
                f"{self.path / 'json'} holds none of MVBench's task files (e.g. action_sequence.json)"
            )

    def config(self) -> dict[str, Any]:
        return {"data": fingerprint(self.path), "frames": self.frames}

    def items(self, image_size: int | None = None) -> Iterator[Item]:
        for task, path in self.tasks.items():
            folder, is_frames, has_bound = TASKS[task]
            try:
                entries = json.loads(path.read_text(encoding="utf-8"))
            except (json.JSONDecodeError, UnicodeDecodeError) as e:
                raise Owl3Error(f"{path} is not valid JSON ({e})") from None
            for n, e in enumerate(entries):
                where = f"{path.name} entry {n + 1}"
                try:
                    cands, answer = [str(c) for c in e["candidates"]], str(e["answer"])
                    video, question = str(e["video"]), str(e["question"])
                except KeyError as k:
                    raise Owl3Error(f"{where}: no {k.args[0]!r} field") from None
                if answer not in cands:
                    raise Owl3Error(f"{where}: the answer is not one of the candidates")
                choices = dict(zip(LETTERS, cands, strict=False))
                bound = (
                    (float(e["start"]), float(e["end"]))
                    if has_bound and "start" in e and "end" in e
                    else None
                )
                src = find_video(self.root / folder, video, where)
                media = _frame_folder(src, self.frames, bound) if is_frames else \
                    clip_loader(src, indices=_video_indices(self.frames, bound))  # fmt: skip
                opts = "\n".join(f"{k}. {v}" for k, v in choices.items())
                qid = f"{task}/{n}"
                yield Item(
                    id=qid,
                    group=task,
                    kind=task,
                    prompt=f"<|video|>\nQuestion: {question}\nOptions:\n{opts}\n{ANSWER_LETTER}",
                    answer=LETTERS[cands.index(answer)],
                    media=media,
                    meta={"bound": list(bound) if bound else None},
                    question=qid,
                    rows=(f"task: {task}",),
                    choices=choices,
                    scoring="choice",
                    frames=self.frames,
                )
