"""A short last phase on top of the shipped model: the `bound` recipe's last phase (`all` mix, binding and
grounding targets) for STEPS more steps at a gentle lr (3e-4 -> 3e-5), on fresh rows (seed 50).

    python repair.py OUT STEPS control|absent [THREADS]

`control`: the phase as it is (more steps of the same). `absent`: with absence targets (`Mix.absent`) and
exists drawn 4x, count_colour / count_shape / shape 2x (position 3x as in the recipe): the exists probe
(exists_supervision.py) reached 82% exists only with a few thousand exists rows and the absence look."""

import shutil
import sys
from dataclasses import replace
from pathlib import Path

from owl3.demo.train import BOUND_PHASES, train_demo

KINDS = ("colour", "shape", "shape", "count_shape", "count_shape", "count_colour", "count_colour",
         "count_all", "position", "position", "position", "size", "exists", "exists", "exists", "exists",
         "word", "word_colour")  # fmt: skip
out, steps, variant = Path(sys.argv[1]), int(sys.argv[2]), sys.argv[3]
threads = int(sys.argv[4]) if len(sys.argv) > 4 else 1
last = BOUND_PHASES[-1]
mix = last.mix if variant == "control" else replace(last.mix, absent=True, kinds=KINDS)
phase = replace(last, name=f"repair-{variant}", mix=mix, steps=steps, lr=3e-4, min_lr=3e-5)
if not (out / "init").exists():
    shutil.copytree(Path(__file__).resolve().parents[3] / "owl3" / "assets" / "demo", out / "init")
train_demo(out, phases=(phase,), progress=False, threads=threads, seed=50)
