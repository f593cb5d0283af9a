"""The recipe's last phase (`count`) again with another step count, from the phases 1-8 of a run of
`owl3 demo-train SRC` (the default recipe, `cells-count`), as `owl3 demo-train` would train it if the
recipe's phase had that many steps: the same rows (seed 8000, as many as the steps take), two torch
threads (the command's default), one loader process.

    python run_phase9.py SRC OUT STEPS
"""
import shutil
import sys
from dataclasses import replace
from pathlib import Path

from owl3.demo import DEFAULT_THREADS
from owl3.demo.train import CELLS_COUNT_PHASES, train_demo

src, out, steps = Path(sys.argv[1]), Path(sys.argv[2]), int(sys.argv[3])
phases = (*CELLS_COUNT_PHASES[:-1], replace(CELLS_COUNT_PHASES[-1], steps=steps))
for k, ph in enumerate(phases[:-1], 1):  # phases 1-8 as SRC trained them (only phase 8's model is read)
    shutil.copytree(src / f"phase-{k}-{ph.name}", out / f"phase-{k}-{ph.name}", dirs_exist_ok=True)
shutil.copytree(src / "init", out / "init", dirs_exist_ok=True)
train_demo(out, phases=phases, preset="demo-cells", threads=DEFAULT_THREADS, workers=1, progress=False)
