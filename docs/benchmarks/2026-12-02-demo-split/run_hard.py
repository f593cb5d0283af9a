"""E3: one more phase after G (`cells-two`, the shipped model) of lists whose distractors all show the
shape the question names (`Mix.hard` 1.0, G's phases 0.5), with P1's shares (half the rows "In Image X"
among 2-8 images, a quarter one picture, a fifth videos, 5% "which image?"): rows an answer cannot get
right without binding image X (ambiguity.py: G answers 100% of the 8-image colour / shape questions no
other image could answer otherwise, 38-76% of the others).

    python run_hard.py G_OUT OUT

As run_again.py otherwise (seed 0, two threads, one loader process, 2 pieces)."""
import sys
from dataclasses import replace

from owl3.demo import DEFAULT_LENGTH_SPLIT, DEFAULT_THREADS
from owl3.demo.train import CELLS_TWO_PHASES, continue_run, train_demo

# G_OUT's record and phase folders into OUT (run_lists.py's lines, moved unchanged into the library after
# these runs: owl3.demo.train.continue_run)
out = continue_run(sys.argv[1], sys.argv[2])
two = CELLS_TWO_PHASES[-1]
mix = replace(two.mix, single=0.25, multi=0.5, which=0.05, video=0.2, hard=1.0)
hard = replace(two, name="hard", mix=mix)
train_demo(out, phases=(*CELLS_TWO_PHASES, hard), preset="demo-cells", threads=DEFAULT_THREADS, workers=1,
           length_split=DEFAULT_LENGTH_SPLIT, seed=0, progress=False)  # fmt: skip
