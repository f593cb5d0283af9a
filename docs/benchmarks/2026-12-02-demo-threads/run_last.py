"""The recipe's last two phases (`video`, `count`) with other step counts, from the earlier phases of a
run of `owl3 demo-train SRC` (the default recipe, `cells-count`), as `owl3 demo-train` would train them if
the recipe's phases had that many steps: the same rows (seeds 7000 and 8000, as many as the steps take),
two torch threads (the command's default), one loader process. Phases that keep their steps are copied
from SRC up to the first that changes.

    python run_last.py SRC OUT VIDEO_STEPS COUNT_STEPS      # 600 600: the recipe itself
"""
import shutil
import sys
from dataclasses import replace
from pathlib import Path

from owl3.demo import DEFAULT_THREADS
from owl3.demo.train import CELLS_COUNT_PHASES, train_demo

src, out = Path(sys.argv[1]), Path(sys.argv[2])
steps = {"video": int(sys.argv[3]), "count": int(sys.argv[4])}
phases = tuple(replace(ph, steps=steps[ph.name]) if ph.name in steps else ph for ph in CELLS_COUNT_PHASES)
shutil.copytree(src / "init", out / "init", dirs_exist_ok=True)
for k, (ph, old) in enumerate(zip(phases, CELLS_COUNT_PHASES, strict=True), 1):
    if ph != old:
        break  # this phase and the ones after it are trained again
    shutil.copytree(src / f"phase-{k}-{ph.name}", out / f"phase-{k}-{ph.name}", dirs_exist_ok=True)
train_demo(out, phases=phases, preset="demo-cells", threads=DEFAULT_THREADS, workers=1, progress=False)
