"""The recipe's last phase again from the from-scratch run's phase 7 (R7, /tmp/repro): its folders up to
phase 7 are copied, and phase 8 trains as `owl3 demo-train` trains it.

    python run_phase8.py OUT same|lists

same (V0): the `video` phase as in the recipe (does it write R's weights again, bit for bit?); lists (V1):
the same with more "In Image X" rows (single 0.15, multi 0.35 instead of 0.3 / 0.2). One torch thread."""
import shutil
import sys
from dataclasses import replace
from pathlib import Path

from owl3.demo.train import CELLS_PHASES, CELLS_VIDEO_PHASES, train_demo

out, variant = Path(sys.argv[1]), sys.argv[2]
src = Path("/tmp/repro")
for name in ["init", *(f"phase-{k}-{ph.name}" for k, ph in enumerate(CELLS_PHASES, 1))]:
    shutil.copytree(src / name, out / name, dirs_exist_ok=True)
video = CELLS_VIDEO_PHASES[-1]
mix = {"same": video.mix, "lists": replace(video.mix, single=0.15, multi=0.35)}[variant]
train_demo(out, phases=(*CELLS_PHASES, replace(video, mix=mix)), preset="demo-cells", threads=1, workers=1,
           progress=False)
