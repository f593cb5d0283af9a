"""C: `bound` with, in its last phase only, absence targets (Mix.absent, a zero count also at "There") and the
weak one-image kinds drawn more often (shape, count_colour, exists 2x; position 3x as before), resumed from
phase 5 of a finished `bound` run BASE; two torch threads (it ran alone).

    python absent_kinds.py OUT BASE"""
import shutil, sys, json
from dataclasses import replace
from pathlib import Path
from owl3.demo.train import BOUND_PHASES, train_demo

KINDS = ("colour", "shape", "shape", "count_shape", "count_colour", "count_colour", "count_all", "position",
         "position", "position", "size", "exists", "exists", "word", "word_colour")
out = Path(sys.argv[1])
last = BOUND_PHASES[-1]
phases = (*BOUND_PHASES[:-1], replace(last, mix=replace(last.mix, absent=True, kinds=KINDS)))
src = Path(sys.argv[2])
if not out.exists():
    out.mkdir(parents=True)
    shutil.copytree(src / "init", out / "init")
    for k, ph in enumerate(phases[:-1], 1):
        shutil.copytree(src / f"phase-{k}-{ph.name}", out / f"phase-{k}-{ph.name}")
    log = json.loads((src / "demo_train.json").read_text())
    log["phases"] = log["phases"][:-1]
    (out / "demo_train.json").write_text(json.dumps(log))
train_demo(out, phases=phases, progress=False, threads=2)
