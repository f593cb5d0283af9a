"""bound recipe on a demo model with 28-px patches (9 visual tokens per picture, one per cell).
python run.py OUT THREADS [STEP_FACTOR [TOWER_STEPS]]"""
import sys
from dataclasses import replace
from owl3.demo.train import BOUND_PHASES, Phase, TowerPhase, train_demo
out, threads = sys.argv[1], int(sys.argv[2])
f = float(sys.argv[3]) if len(sys.argv) > 3 else 1.0
tower = int(sys.argv[4]) if len(sys.argv) > 4 else 1600
phases = tuple(replace(ph, steps=round(ph.steps * f)) if isinstance(ph, Phase) else replace(ph, steps=tower) if isinstance(ph, TowerPhase) else ph for ph in BOUND_PHASES)
print([(p.name, getattr(p, "steps", 0)) for p in phases])
# ran with a preset "demo28" built here: demo with patch 28, the same config as the project's demo-cells
train_demo(out, phases=phases, preset="demo-cells", threads=threads, workers=1, progress=False)
