"""Recipe `bound` with absence targets (Mix.absent) in the phases named on the command line, resumed from a
finished `bound` run BASE (`owl3 demo-train BASE`; here the sixth session's from-scratch run, whose model is
the shipped one): the phases before the first changed one are copied from it.

    python absent.py BASE OUT all            # A: the last phase only
    python absent.py BASE OUT binding,all    # B: the binding phase and the last phase
    python absent.py BASE OUT all 2          # A2: as A, after the zero-count target at "There" was added,
                                             #     two torch threads (it ran alone)"""
import shutil, sys, json
from dataclasses import replace
from pathlib import Path
from owl3.demo.train import BOUND_PHASES, Phase, train_demo

src, out, names = Path(sys.argv[1]), Path(sys.argv[2]), sys.argv[3].split(",")
phases = tuple(replace(ph, mix=replace(ph.mix, absent=True)) if isinstance(ph, Phase) and ph.name in names else ph
               for ph in BOUND_PHASES)
first = min(k for k, ph in enumerate(phases, 1) if ph.name in names)
if not out.exists():
    out.mkdir(parents=True)
    shutil.copytree(src / "init", out / "init")
    for k, ph in enumerate(phases[: first - 1], 1):
        shutil.copytree(src / f"phase-{k}-{ph.name}", out / f"phase-{k}-{ph.name}")
    log = json.loads((src / "demo_train.json").read_text())
    log["phases"] = log["phases"][: first - 1]
    (out / "demo_train.json").write_text(json.dumps(log))
train_demo(out, phases=phases, progress=False, threads=int(sys.argv[4]) if len(sys.argv) > 4 else 1)
