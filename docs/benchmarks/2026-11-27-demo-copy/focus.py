"""W's final model, then a phase of "In Image X" rows alone and a short mixed phase against forgetting:

    python focus.py NAME OUT [THREADS]

G: the focus phase asks every question kind; H: only the kinds read from one object (colour, shape, size,
position), as the probes E3 / E4 did; I: H with a fifth of its rows "which image?" questions (H lost
them). Each: 300 steps of 2-8 images, question before and after the list,
the after-image look and the 4-token text target (weight 1), lr 1e-3 -> 1e-4; then 150 steps of the last
phase's mix (W's, weight 8) at lr 3e-4 -> 3e-5. OUT must hold W's seven phase folders (commands.sh)."""

import sys
from dataclasses import replace

from owl3.demo.data import Mix
from owl3.demo.train import FIRST_PHASES, Phase, train_demo

which = sys.argv[1]
w = tuple(
    replace(p, mix=replace(p.mix, bind_after=True, question_style="question_twice"))
    if isinstance(p, Phase) and p.mix.bind
    else p
    for p in FIRST_PHASES
)  # the ninth session's W (its run.py)
last = w[-1]
kinds = ("colour", "shape", "size", "position") if which in ("H", "I") else None
focus = Mix(single=0.0, multi=1.0, which=0.0, video=0.0, n_min=2, n_max=8, window=0.3, kinds=kinds, bind=True,
            bind_after=True, question_first=1.0, question_style="question_twice")  # fmt: skip
if which == "I":
    focus = replace(focus, multi=0.8, which=0.2)
phases = (
    *w,
    Phase("focus", focus, steps=300, lr=1e-3, min_lr=1e-4, attention_loss_weight=1.0,
          text_attention_layer=last.text_attention_layer),
    replace(last, name="remix", steps=150, lr=3e-4, min_lr=3e-5),
)  # fmt: skip
train_demo(sys.argv[2], phases=phases, threads=int(sys.argv[3]) if len(sys.argv) > 3 else 1, workers=1)
