"""The tenth session's H as one recipe from scratch, fitted into the hour: W (the question before and after
the list, the token after image X told to look at the asked object) with its binding phase 1,000 -> 700
steps and its last phase 900 -> 800, then H's focus phase (300 steps of "In Image X" rows about one object:
colour, shape, size, position) and 150 steps of the last phase's mix against forgetting
(docs/benchmarks/2026-11-27-demo-copy/focus.py). H took 67.6 min on this shared CPU; the cuts save ~8.5.

    python twice_focus.py OUT [THREADS] [full]

`full` keeps W's phases as they were (binding 1,000, last 900 steps): H itself, from scratch.

The model folder gets demo_layout.json (question_twice), so `owl3 eval synthetic` and `owl3 demo` ask in
that layout."""

import sys
from dataclasses import replace

from owl3.demo.train import FIRST_PHASES, RECIPES, Phase, train_demo

phases = RECIPES["twice-focus"]  # owl3 demo-train --recipe twice-focus
if sys.argv[3:] == ["full"]:  # W's binding and last phases uncut
    steps = {p.name: p.steps for p in FIRST_PHASES if isinstance(p, Phase)}
    phases = tuple(
        replace(p, steps=steps[p.name]) if isinstance(p, Phase) and p.name in ("binding", "all") else p
        for p in phases
    )
for p in phases:
    print(p.name, getattr(p, "steps", 0), flush=True)
train_demo(sys.argv[1], phases=phases, threads=int(sys.argv[2]) if len(sys.argv) > 2 else 1, workers=1,
           progress=False)  # fmt: skip
