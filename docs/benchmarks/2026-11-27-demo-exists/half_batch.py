"""The `bound` recipe from scratch with batches of 16 instead of 32 in its question phases, twice the steps
(the same rows, so about the same time) and the lr x 1/sqrt(2) (Adam's square-root rule): does a recipe
that the plateau experiments found short of updates rather than of rows gain from twice the updates?

    python half_batch.py OUT [THREADS]"""

import sys
from dataclasses import replace

from owl3.demo.train import BOUND_PHASES, Phase, train_demo

phases = tuple(
    replace(ph, steps=2 * ph.steps, lr=ph.lr / 2**0.5, min_lr=ph.min_lr / 2**0.5)
    if isinstance(ph, Phase)
    else ph
    for ph in BOUND_PHASES
)
for ph in phases:
    print(
        ph.name, getattr(ph, "steps", 0), getattr(ph, "lr", None), getattr(ph, "batch_size", None), flush=True
    )
train_demo(
    sys.argv[1],
    phases=phases,
    batch_size=16,
    progress=False,
    threads=int(sys.argv[2]) if len(sys.argv) > 2 else 1,
)
