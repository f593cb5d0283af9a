"""A video phase after the shipped `cells` model (the twelfth session's, git 6469812): its weights are put in
place of phases 1-7 of a run folder, which `train_demo` then skips, and phase 8 trains from them with its
own fresh rows (seed 7000), exactly as `owl3 demo-train` runs that phase after training phases 1-7 itself.

    python run_video.py OUT VARIANT [STEPS]

VARIANT: plain (A), turns (B, and E with STEPS 1200: now `--recipe cells-video`'s last phase at 600 steps),
turns-video (C: more video rows), turns5 (D: five questions a row). One torch thread, one loader process."""
import shutil
import subprocess
import sys
import tempfile
from dataclasses import replace
from pathlib import Path

from owl3.demo.train import CELLS_PHASES, CELLS_VIDEO_PHASES, VIDEO_WEIGHTED_KINDS, train_demo

out, variant = Path(sys.argv[1]), sys.argv[2]
steps = int(sys.argv[3]) if len(sys.argv) > 3 else 600
with tempfile.TemporaryDirectory() as tmp:  # the cells model as shipped before this session
    subprocess.run(f"git archive 6469812 owl3/assets/demo | tar x -C {tmp}", shell=True, check=True)
    ship = Path(tmp) / "owl3/assets/demo"
    for name in ["init", *(f"phase-{k}-{ph.name}" for k, ph in enumerate(CELLS_PHASES, 1))]:
        (out / name).mkdir(parents=True, exist_ok=True)
        for f in ship.iterdir():
            shutil.copy2(f, out / name / f.name)
weak = CELLS_PHASES[-1]
mix = replace(weak.mix, single=0.3, multi=0.2, which=0.05, video=0.45, video_kinds=VIDEO_WEIGHTED_KINDS)
mix = {
    "plain": mix,
    "turns": replace(mix, turns=3),
    "turns-video": replace(mix, turns=3, single=0.2, multi=0.15, which=0.05, video=0.6),
    "turns5": replace(mix, turns=5),
}[variant]
phase = replace(weak, name="video", mix=mix, steps=steps, lr=5e-4, min_lr=5e-5)
if variant == "turns" and steps == 600:
    assert phase == CELLS_VIDEO_PHASES[-1]  # B is the recipe's last phase
train_demo(out, phases=(*CELLS_PHASES, phase), preset="demo-cells", threads=1, workers=1, progress=False)
