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

from owl3.demo.data import Mix
from owl3.demo.train import FIRST_PHASES, Phase, train_demo

w = tuple(
    replace(p, mix=replace(p.mix, bind_after=True, question_style="question_twice"))
    if isinstance(p, Phase) and p.mix.bind
    else p
    for p in FIRST_PHASES
)  # the ninth session's W
cut = {} if sys.argv[3:] == ["full"] else {"binding": 700, "all": 800}
w = tuple(replace(p, steps=cut[p.name]) if isinstance(p, Phase) and p.name in cut else p for p in w)
last = w[-1]
focus = Mix(single=0.0, multi=1.0, which=0.0, video=0.0, n_min=2, n_max=8, window=0.3,
            kinds=("colour", "shape", "size", "position"), bind=True, bind_after=True, question_first=1.0,
            question_style="question_twice")  # fmt: skip
phases = (
    *w,
    Phase("focus", focus, steps=300, lr=1e-3, min_lr=1e-4, attention_loss_weight=1.0,
          text_attention_layer=last.text_attention_layer),
    replace(last, name="remix", steps=150, lr=3e-4, min_lr=3e-5),
)  # fmt: skip
for p in phases:
    print(p.name, getattr(p, "steps", 0), flush=True)
train_demo(sys.argv[1], phases=phases, threads=int(sys.argv[2]) if len(sys.argv) > 2 else 1, workers=1,
           progress=False)  # fmt: skip
