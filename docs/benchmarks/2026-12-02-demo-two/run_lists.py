"""P1: one more phase after G (`cells-two`), with more "In Image X" rows: does more list training after the
recipe move 8 images? (The fifteenth session's longer video phase, 20% list rows, lifted 8 images by 6.0 /
4.3 points at seeds 2 / 3.)

    python run_lists.py G_OUT OUT

OUT gets G_OUT's record and phase folders (the placeholders and G's phases 9-10), so `train_demo` trains
only phase 11: `cells-two`'s last phase (its lr, targets, 600 steps, balanced one-image counts with odds)
with half its rows "In Image X" among 2-8 images, a quarter one picture, a fifth videos and 5% "which
image?" (G: half one picture, a fifth lists, a quarter videos). Seed 0, two threads, one loader process."""
import sys
from dataclasses import replace

from owl3.demo import DEFAULT_THREADS
from owl3.demo.train import CELLS_TWO_PHASES, continue_run, train_demo

# G_OUT's record and phase folders into OUT: the lines that stood here when P1 ran, moved unchanged into
# the library in the eighteenth session (owl3.demo.train.continue_run)
out = continue_run(sys.argv[1], sys.argv[2])
two = CELLS_TWO_PHASES[-1]
lists = replace(two, name="lists", mix=replace(two.mix, single=0.25, multi=0.5, which=0.05, video=0.2))
train_demo(out, phases=(*CELLS_TWO_PHASES, lists), preset="demo-cells", threads=DEFAULT_THREADS, workers=1,
           seed=0, progress=False)  # fmt: skip
