"""`bound` with follow-up turns (Mix.turns=TURNS) and, with `absent`, absence targets in its binding and last
phases, their steps scaled by SCALE (a row of three questions costs more than one), resumed from phase 3 of
a finished `bound` run BASE (the tower, recency and single phases are bound's own).

    python turns.py BASE OUT 3 0.8 absent    # T
    python turns.py BASE OUT 3 0.6 absent    # T6"""
import shutil, sys, json
from dataclasses import replace
from pathlib import Path
from owl3.demo.train import BOUND_PHASES, Phase, train_demo

src, out = Path(sys.argv[1]), Path(sys.argv[2])
turns, scale = int(sys.argv[3]), float(sys.argv[4])
absent = len(sys.argv) > 5 and sys.argv[5] == "absent"
phases = tuple(
    replace(ph, steps=round(ph.steps * scale), mix=replace(ph.mix, turns=turns, absent=absent))
    if isinstance(ph, Phase) and ph.name in ("binding", "all") else ph
    for ph in BOUND_PHASES
)
if not out.exists():
    out.mkdir(parents=True)
    shutil.copytree(src / "init", out / "init")
    for k, ph in enumerate(phases[:3], 1):
        shutil.copytree(src / f"phase-{k}-{ph.name}", out / f"phase-{k}-{ph.name}")
    log = json.loads((src / "demo_train.json").read_text())
    log["phases"] = log["phases"][:3]
    (out / "demo_train.json").write_text(json.dumps(log))
print([(getattr(p, "name"), getattr(p, "steps", 0)) for p in phases], flush=True)
train_demo(out, phases=phases, progress=False)
