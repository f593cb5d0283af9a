import sys
from dataclasses import replace
from owl3.demo.train import BOUND_PHASES, FIRST_PHASES, Phase, train_demo
which = sys.argv[1]
if which == "Q":
    phases = FIRST_PHASES
elif which == "Q0":  # the question first only: no recency heads in hyper layer 2, text targets at layer 3
    phases = tuple(replace(p, mix=replace(p.mix, question_first=1.0)) if isinstance(p, Phase) and p.mix.bind else p
                   for p in BOUND_PHASES)
if which == "R":  # Q plus the token after image X looking at X's object
    phases = tuple(replace(p, mix=replace(p.mix, bind_after=True)) if isinstance(p, Phase) and p.mix.bind else p
                   for p in FIRST_PHASES)
if which == "W":  # R with the question before and after the list
    phases = tuple(replace(p, mix=replace(p.mix, bind_after=True, question_style="question_twice"))
                   if isinstance(p, Phase) and p.mix.bind else p for p in FIRST_PHASES)
if which == "W1":  # W with the text target on the one token right after image X, in its last phase
    phases = tuple(replace(p, mix=replace(p.mix, bind_after=True, question_style="question_twice",
                                          bind_tokens=1 if p.name == "all" else 4))
                   if isinstance(p, Phase) and p.mix.bind else p for p in FIRST_PHASES)
print([(p.name, getattr(getattr(p, "mix", None), "question_first", None), getattr(p, "text_attention_layer", None)) for p in phases])
train_demo(sys.argv[2], phases=phases, threads=int(sys.argv[3]) if len(sys.argv) > 3 else 1, workers=1)
