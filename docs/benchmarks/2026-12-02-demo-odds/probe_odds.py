"""A short extra phase after the shipped model: does a look that can count ("odds") teach it to tell a count
of two from one?

    python probe_odds.py OUT ODDS [STEPS] [balance] [single] [recipe-lr]   # ODDS 0: the recipe's own look

OUT/init is the shipped model (owl3/assets/demo); then one phase of STEPS (default 300) steps with the
recipe's `count` phase's mix, targets and weights, but list rows of 2-8 images (cheaper), a lower lr
(2e-4 -> 2e-5, a fine-tune of a finished model) and `Mix.count_odds` = ODDS; with `balance`, also
`Mix.count_balance` (counts of none, one and two drawn equally often); with `single`, one-image rows only
(no lists, videos or "which image?") at the count phase's own lr (5e-4 -> 5e-5): whether the look can be
read at all, not a phase for the recipe; with `recipe-lr`, the count phase's own lr for the mixed rows
too. Two torch threads, one loader process, as `owl3 demo-train`."""
import shutil
import sys
from dataclasses import replace
from pathlib import Path

from owl3.demo import DEFAULT_THREADS
from owl3.demo.train import CELLS_MORE_VIDEO_PHASES, train_demo

out, odds = Path(sys.argv[1]), float(sys.argv[2])
steps = int(sys.argv[3]) if len(sys.argv) > 3 else 300
count = CELLS_MORE_VIDEO_PHASES[-1]
balance = "balance" in sys.argv[4:]
mix = replace(count.mix, n_max=8, log_uniform=False, count_odds=odds, count_balance=balance)
phase = replace(count, name="countfix", mix=mix, steps=steps, lr=2e-4, min_lr=2e-5)
if "recipe-lr" in sys.argv[4:]:
    phase = replace(count, name="countfix", mix=mix, steps=steps)
if "single" in sys.argv[4:]:
    mix = replace(mix, single=1.0, multi=0.0, which=0.0, video=0.0)
    phase = replace(count, name="countfix", mix=mix, steps=steps)
shipped = Path(__file__).resolve().parents[3] / "owl3" / "assets" / "demo"
shutil.copytree(shipped, out / "init", dirs_exist_ok=True)
train_demo(out, phases=(phase,), preset="demo-cells", threads=DEFAULT_THREADS, workers=1, progress=False,
           seed=11)  # fmt: skip
