"""E3: one more phase after G (`cells-two`, the shipped model) of lists whose distractors all show the
shape the question names (`Mix.hard` 1.0, G's phases 0.5), with P1's shares (half the rows "In Image X"
among 2-8 images, a quarter one picture, a fifth videos, 5% "which image?"): rows an answer cannot get
right without binding image X (ambiguity.py: G answers 100% of the 8-image colour / shape questions no
other image could answer otherwise, 38-76% of the others).

    python run_hard.py G_OUT OUT

As run_again.py otherwise (seed 0, two threads, one loader process, 2 pieces)."""
import shutil
import sys
from dataclasses import replace
from pathlib import Path

from owl3.demo import DEFAULT_LENGTH_SPLIT, DEFAULT_THREADS
from owl3.demo.train import CELLS_TWO_PHASES, train_demo

src, out = Path(sys.argv[1]), Path(sys.argv[2])
out.mkdir(parents=True, exist_ok=True)
shutil.copy(src / "demo_train.json", out / "demo_train.json")
for d in sorted(src.glob("phase-*")) + [src / "init"]:
    target = out / d.name
    target.mkdir(exist_ok=True)
    for f in d.iterdir():
        if f.is_file() and not (target / f.name).exists():
            if f.is_symlink():
                (target / f.name).symlink_to(f.resolve())
            else:
                shutil.copy2(f, target / f.name)
two = CELLS_TWO_PHASES[-1]
mix = replace(two.mix, single=0.25, multi=0.5, which=0.05, video=0.2, hard=1.0)
train_demo(out, phases=(*CELLS_TWO_PHASES, replace(two, name="hard", mix=mix)), preset="demo-cells",
           threads=DEFAULT_THREADS, workers=1, length_split=DEFAULT_LENGTH_SPLIT, seed=0, progress=False)  # fmt: skip
