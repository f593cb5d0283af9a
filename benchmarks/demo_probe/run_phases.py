"""The two longer demo-training runs of docs/demo.md ("What the fix achieved").

python benchmarks/demo_probe/run_phases.py A OUT   # sees' one-object + single, then 1,500 more single steps
python benchmarks/demo_probe/run_phases.py B OUT   # one-object 300, single 700, binding 850 (stopped early)
"""

import sys
from dataclasses import replace

from owl3.demo.data import MIXES
from owl3.demo.train import ONE_OBJECT, SEES_PHASES, SINGLE, Phase, train_demo

RUNS = {
    "A": SEES_PHASES[:2]
    + (Phase("single-2", SINGLE, steps=1500, lr=1e-3, min_lr=1e-4, vision_lr_scale=1.0),),
    "B": (
        Phase("one-object", ONE_OBJECT, steps=300, lr=1e-3, min_lr=5e-4, vision_lr_scale=1.0),
        Phase("single", SINGLE, steps=700, lr=1e-3, min_lr=3e-4, vision_lr_scale=1.0),
        Phase(
            "binding",
            replace(MIXES["binding"], window=0.3),
            steps=850,
            lr=8e-4,
            min_lr=5e-5,
            vision_lr_scale=1.0,
        ),
    ),
}
train_demo(sys.argv[2], phases=RUNS[sys.argv[1]], progress=False)
