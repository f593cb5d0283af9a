"""E1: one more phase after G (`cells-two`, the shipped model) in which a fifth of the question kinds are
`describe` ("What do you see?" -> "I see a red star and a blue circle.", the objects in reading order;
owl3/demo/questions.py DESCRIBE): in "In Image X" rows an answer that must read every object of image X,
each with the binding targets at the word that names its colour (a look at its cell in image X and at the
tokens after image X, as every "In Image X" answer of the phase has). Does dense binding supervision move
8 images, where more list rows (P1) did not?

    python run_describe.py G_OUT OUT

OUT gets G_OUT's record and phase folders (placeholders and G's phases 9-10), so `train_demo` trains only
phase 11: `cells-two`'s last phase (mix, lr, targets, 600 steps) with its kinds and 8 x `describe`.
Seed 0, two threads, one loader process, batches in 2 pieces (this commit's `owl3 demo-train`)."""
import sys
from dataclasses import replace

from owl3.demo import DEFAULT_LENGTH_SPLIT, DEFAULT_THREADS
from owl3.demo.questions import DESCRIBE
from owl3.demo.train import CELLS_TWO_PHASES, COUNT_WEIGHTED_KINDS, continue_run, train_demo

# G_OUT's record and phase folders into OUT (run_lists.py's lines, moved unchanged into the library after
# these runs: owl3.demo.train.continue_run)
out = continue_run(sys.argv[1], sys.argv[2])
two = CELLS_TWO_PHASES[-1]
kinds = (*COUNT_WEIGHTED_KINDS, *(DESCRIBE,) * 8)
describe = replace(two, name="describe", mix=replace(two.mix, kinds=kinds))
train_demo(out, phases=(*CELLS_TWO_PHASES, describe), preset="demo-cells", threads=DEFAULT_THREADS, workers=1,
           length_split=DEFAULT_LENGTH_SPLIT, seed=0, progress=False)  # fmt: skip
