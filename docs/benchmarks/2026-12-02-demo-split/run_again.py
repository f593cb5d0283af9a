"""C: the control of E1 and E2: one more phase after G (`cells-two`, the shipped model), `cells-two`'s last
phase unchanged (its mix, lr, targets and 600 steps, fresh rows): what another 600 steps alone do.

    python run_again.py G_OUT OUT

As run_describe.py / run_label_after.py otherwise (seed 0, two threads, one loader process, 2 pieces)."""
import sys
from dataclasses import replace

from owl3.demo import DEFAULT_LENGTH_SPLIT, DEFAULT_THREADS
from owl3.demo.train import CELLS_TWO_PHASES, continue_run, train_demo

# G_OUT's record and phase folders into OUT (run_lists.py's lines, moved unchanged into the library after
# these runs: owl3.demo.train.continue_run)
out = continue_run(sys.argv[1], sys.argv[2])
again = replace(CELLS_TWO_PHASES[-1], name="again")
train_demo(out, phases=(*CELLS_TWO_PHASES, again), preset="demo-cells", threads=DEFAULT_THREADS, workers=1,
           length_split=DEFAULT_LENGTH_SPLIT, seed=0, progress=False)  # fmt: skip
