"""C: the control of E1 and E2: one more phase after G (`cells-two`, the shipped model), `cells-two`'s last
phase unchanged (its mix, lr, targets and 600 steps, fresh rows): what another 600 steps alone do.

    python run_again.py G_OUT OUT

As run_describe.py / run_label_after.py otherwise (seed 0, two threads, one loader process, 2 pieces)."""
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
again = replace(CELLS_TWO_PHASES[-1], name="again")
train_demo(out, phases=(*CELLS_TWO_PHASES, again), preset="demo-cells", threads=DEFAULT_THREADS, workers=1,
           length_split=DEFAULT_LENGTH_SPLIT, seed=0, progress=False)  # fmt: skip
