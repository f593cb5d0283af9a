"""Videos of the video benchmarks: finding the file of an id, and sampling its frames lazily with the
benchmark's official rule (the middle frame of N equal segments unless the task computes its own indices).
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

from owl3.errors import Owl3Error

VIDEO_SUFFIXES = (".mp4", ".mkv", ".webm", ".avi", ".mov", ".gif")


def find_video(root: Path, name: str, where: str) -> Path:
    """`root/name` as given, else with one of the usual suffixes."""
    p = root / name
    if p.is_file() or p.is_dir():
        return p
    for suffix in VIDEO_SUFFIXES:
        if p.with_name(p.name + suffix).is_file():
            return p.with_name(p.name + suffix)
    raise Owl3Error(
        f"{where}: video {name!r} not found under {root}; pass the video folder with --video-root"
    )


def clip_loader(
    path: Path, *, frames: int | None = None, indices: Callable[[Path], list[int]] | None = None
) -> Callable[[], tuple[list, list[list[Any]]]]:
    """A media() callable: ([], [the sampled frames]), read when a batch needs them."""

    def media() -> tuple[list, list[list[Any]]]:
        from owl3.processing.video import read_frames, read_video

        if indices is not None:
            return [], [read_frames(path, indices(path))]
        return [], [read_video(path, frames=frames)]

    return media
