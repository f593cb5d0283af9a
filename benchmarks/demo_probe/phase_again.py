"""The last phase of a demo run again, from that run's second-to-last model, with another recipe's phase.

    python benchmarks/demo_probe/phase_again.py SRC OUT VARIANT [THREADS]

`SRC` is a finished `owl3 demo-train` run; `OUT` becomes a copy of it without its last phase, which is then
trained as VARIANT's last phase (the same rows, seed and lr as SRC's, the targets as VARIANT says; THREADS
torch threads, default 2). VARIANT: `copy` (`cells-copy`), `copy-one` (`cells-copy` with the answer's layer-2
look on the one token right after image X, `Mix.bind_tokens` 1), `labels-copy` (`cells-labels` with the label
targets, of which only the question's apply: its labels stand after the images), `all-copy`
(`cells-all-recency` with the label targets), `copy-head-plain-counts` (`cells-copy-head` whose last phase
draws one-image counts as the world does), `copy-head-long` (`cells-copy-long`: `cells-copy-head` with its
last phase twice as long), `copy-long-which` (`cells-copy-long` with "which image?" targets in its last
phase), `copy-long-lists` (`cells-copy-long` whose last phase's lists hold 2-24 images), `copy-head-counts`
(`cells-copy-head` whose last phase asks twice as many counts of a colour or a shape). A quick look at a
change of the targets at the cost of one phase (about 5 min with two threads), against SRC's own model on the
same questions.
"""

import shutil
import sys
from dataclasses import replace
from pathlib import Path

from owl3.demo.train import (
    CELLS_ALL_RECENCY_PHASES,
    CELLS_COPY_HEAD_PHASES,
    CELLS_COPY_LISTS_PHASES,
    CELLS_COPY_LONG_PHASES,
    CELLS_COPY_PHASES,
    CELLS_LABELS_PHASES,
    Phase,
    continue_run,
    train_demo,
)  # fmt: skip


def with_copy(phases):
    return tuple(
        replace(p, mix=replace(p.mix, copy_label=True)) if isinstance(p, Phase) and p.mix.bind else p
        for p in phases
    )


# the last phase's kinds with counts of a colour or a shape drawn twice as often (10 of 30 -> 20 of 40)
_MORE_COUNTS = (*CELLS_COPY_HEAD_PHASES[-1].mix.kinds, *("count_colour",) * 6, *("count_shape",) * 4)
VARIANTS = {
    "copy": CELLS_COPY_PHASES,
    "copy-one": tuple(
        replace(p, mix=replace(p.mix, bind_tokens=1)) if isinstance(p, Phase) and p.mix.copy_label else p
        for p in CELLS_COPY_PHASES
    ),
    "labels-copy": with_copy(CELLS_LABELS_PHASES),
    "all-copy": with_copy(CELLS_ALL_RECENCY_PHASES),
    # `cells-copy-head` whose last phase draws one-image counts as the world does (no `count_balance`)
    "copy-head-plain-counts": (
        *CELLS_COPY_HEAD_PHASES[:-1],
        replace(CELLS_COPY_HEAD_PHASES[-1], mix=replace(CELLS_COPY_HEAD_PHASES[-1].mix, count_balance=False)),
    ),
    # `cells-copy-head` whose last phase is twice as long (1,200 steps): the recipe `cells-copy-long`
    "copy-head-long": CELLS_COPY_LONG_PHASES,
    # `cells-copy-head` whose last phase asks about twice as many counts of a colour or a shape
    "copy-head-counts": (
        *CELLS_COPY_HEAD_PHASES[:-1],
        replace(CELLS_COPY_HEAD_PHASES[-1], mix=replace(CELLS_COPY_HEAD_PHASES[-1].mix, kinds=_MORE_COUNTS)),
    ),
    # `cells-copy-long` whose last phase points the answer of "which image?" rows at the tokens after the
    # image that has the thing (`Mix.bind_which`), now that those tokens carry their image's number
    "copy-long-which": (
        *CELLS_COPY_LONG_PHASES[:-1],
        replace(CELLS_COPY_LONG_PHASES[-1], mix=replace(CELLS_COPY_LONG_PHASES[-1].mix, bind_which=True)),
    ),
    # `cells-copy-long` whose last phase draws its list rows from 2-24 images (log-uniform) instead of 2-8:
    # the recipe `cells-copy-lists`
    "copy-long-lists": CELLS_COPY_LISTS_PHASES,
}
src, out, variant = sys.argv[1], sys.argv[2], sys.argv[3]
threads = int(sys.argv[4]) if len(sys.argv) > 4 else 2
phases = VARIANTS[variant]
continue_run(src, out)
for d in Path(out).glob(f"phase-{len(phases)}-*"):
    shutil.rmtree(d)
train_demo(out, phases=phases, preset="demo-cells", threads=threads, length_split=2, progress=False)
