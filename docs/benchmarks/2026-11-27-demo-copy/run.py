"""Resume a recipe from W's (the ninth session's) finished phases: python run.py NAME OUT [THREADS]

A: recipe `after`; B: `after` keeping the answer's own look at image X's object (`bind_look`); both from W's
first four phases (tower, recency, single, recency-2, the same in `after`). F1 / F2, from W's first six
phases (up to its gates step): W's last phase without the answer's own look at image X's object (`bind_look`
off), the four text-target tokens kept; F2 also draws more "In Image X" rows in it (single 0.25, multi 0.5,
which 0.1, video 0.15 instead of 0.35 / 0.35 / 0.1 / 0.2)."""

import sys
from dataclasses import replace

from owl3.demo.train import AFTER_PHASES, Phase, train_demo

which = sys.argv[1]
phases = AFTER_PHASES
if which in ("F1", "F2"):

    def last(p):
        mix = replace(p.mix, bind_tokens=4, bind_look=p.name != "all")
        if which == "F2" and p.name == "all":
            mix = replace(mix, single=0.25, multi=0.5, which=0.1, video=0.15)
        return replace(p, mix=mix)

    phases = tuple(last(p) if isinstance(p, Phase) and p.mix.bind else p for p in AFTER_PHASES)
if which == "B":
    phases = tuple(
        replace(p, mix=replace(p.mix, bind_look=True)) if isinstance(p, Phase) and p.mix.bind else p
        for p in AFTER_PHASES
    )
print(
    [
        (
            p.name,
            getattr(getattr(p, "mix", None), "bind_tokens", None),
            getattr(getattr(p, "mix", None), "bind_look", None),
        )
        for p in phases
    ]
)
train_demo(sys.argv[2], phases=phases, threads=int(sys.argv[3]) if len(sys.argv) > 3 else 1, workers=1)
