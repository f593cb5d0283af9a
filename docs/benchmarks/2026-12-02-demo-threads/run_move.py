"""The default recipe (`cells-more-video`) with "which way did X move?" drawn 3x as often in its `video`
phase (move_direction, the weakest video kind of the two-thread runs), from the phases 1-7 of a run of
`owl3 demo-train SRC`; the `count` phase as the recipe's. Two torch threads, one loader process.

    python run_move.py SRC OUT
"""
import shutil
import sys
from dataclasses import replace
from pathlib import Path

from owl3.demo import DEFAULT_THREADS
from owl3.demo.train import CELLS_MORE_VIDEO_PHASES, VIDEO_WEIGHTED_KINDS, train_demo

src, out = Path(sys.argv[1]), Path(sys.argv[2])
kinds = (*VIDEO_WEIGHTED_KINDS, "move_direction", "move_direction")
phases = tuple(
    replace(ph, mix=replace(ph.mix, video_kinds=kinds)) if ph.name == "video" else ph
    for ph in CELLS_MORE_VIDEO_PHASES
)
shutil.copytree(src / "init", out / "init", dirs_exist_ok=True)
for k, ph in enumerate(phases[:7], 1):  # phases 1-7 as SRC trained them
    shutil.copytree(src / f"phase-{k}-{ph.name}", out / f"phase-{k}-{ph.name}", dirs_exist_ok=True)
train_demo(out, phases=phases, preset="demo-cells", threads=DEFAULT_THREADS, workers=1, progress=False)
