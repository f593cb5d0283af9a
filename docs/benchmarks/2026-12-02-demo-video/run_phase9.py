"""A second video phase after the recipe's from-scratch run (R, /tmp/repro): its folders are copied, and
phase 9 trains from R with fresh rows (seed 8000), as `owl3 demo-train` would if the recipe had that phase.

    python run_phase9.py OUT again|count

again (P): the `video` phase once more; count (Q): the same with `Mix.count_look` (the answer to "how many
objects appeared?" told to look at every object of the last frame). One torch thread, one loader process."""
import shutil
import sys
from dataclasses import replace
from pathlib import Path

from owl3.demo.train import CELLS_VIDEO_PHASES, train_demo

out, variant = Path(sys.argv[1]), sys.argv[2]
src = Path("/tmp/repro")
for name in ["init", *(f"phase-{k}-{ph.name}" for k, ph in enumerate(CELLS_VIDEO_PHASES, 1))]:
    shutil.copytree(src / name, out / name, dirs_exist_ok=True)
shutil.copy2(src / "demo_train.json", out / "demo_train.json")
video = CELLS_VIDEO_PHASES[-1]
mix = {"again": video.mix, "count": replace(video.mix, count_look=True)}[variant]
phase = replace(video, name="video-2", mix=mix)
train_demo(out, phases=(*CELLS_VIDEO_PHASES, phase), preset="demo-cells", threads=1, workers=1,
           progress=False)
