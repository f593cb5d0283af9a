"""The `bound` recipe from scratch with batches of 32/FACTOR instead of 32 in its question phases, FACTOR
times the steps (the same rows, so about the same time) and the lr / sqrt(FACTOR) (Adam's square-root
rule): the eighth session found the recipe not short of examples; is it short of updates? FACTOR
defaults to 2 (batches of 16).

    python half_batch.py OUT [THREADS] [FACTOR]"""

import sys
from dataclasses import replace

from owl3.demo.train import BOUND_PHASES, Phase, train_demo

threads = int(sys.argv[2]) if len(sys.argv) > 2 else 1
factor = int(sys.argv[3]) if len(sys.argv) > 3 else 2
phases = tuple(
    replace(ph, steps=factor * ph.steps, lr=ph.lr / factor**0.5, min_lr=ph.min_lr / factor**0.5)
    if isinstance(ph, Phase)
    else ph
    for ph in BOUND_PHASES
)
for ph in phases:
    print(
        ph.name, getattr(ph, "steps", 0), getattr(ph, "lr", None), getattr(ph, "batch_size", None), flush=True
    )
train_demo(sys.argv[1], phases=phases, batch_size=32 // factor, progress=False, threads=threads)
