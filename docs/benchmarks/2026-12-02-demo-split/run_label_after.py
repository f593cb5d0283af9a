"""E2: one more phase after G (`cells-two`, the shipped model) in which every list row ("In Image X" and
"which image?") puts the labels after the images: `<|image|> (Image 1) <|image|> (Image 2) ... . In Image
3, ...` (`Mix.label_after` 1). In the paper's layout the tokens right after image X say "Image X+1:", so
the answer's route to image X (the tokens after it, which the recency heads fill with it) is named by the
wrong label; here those tokens are image X's own label, which the question repeats. The model is then
asked list questions in that layout (demo_layout.json "label_after": `owl3 eval synthetic`, `owl3 demo`).

    python run_label_after.py G_OUT OUT

OUT gets G_OUT's record and phase folders, so `train_demo` trains only phase 11: `cells-two`'s last phase
(mix, lr, targets, 600 steps) with `label_after=1.0`. Seed 0, two threads, one loader process, batches in
2 pieces (this commit's `owl3 demo-train`)."""
import sys
from dataclasses import replace

from owl3.demo import DEFAULT_LENGTH_SPLIT, DEFAULT_THREADS
from owl3.demo.train import CELLS_TWO_PHASES, continue_run, train_demo

# G_OUT's record and phase folders into OUT (run_lists.py's lines, moved unchanged into the library after
# these runs: owl3.demo.train.continue_run)
out = continue_run(sys.argv[1], sys.argv[2])
two = CELLS_TWO_PHASES[-1]
labels = replace(two, name="labels", mix=replace(two.mix, label_after=1.0))
train_demo(out, phases=(*CELLS_TWO_PHASES, labels), preset="demo-cells", threads=DEFAULT_THREADS, workers=1,
           length_split=DEFAULT_LENGTH_SPLIT, seed=0, progress=False)  # fmt: skip
