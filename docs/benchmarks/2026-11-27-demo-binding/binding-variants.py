"""Two variants of the `bound` recipe's binding phase (docs/demo.md, "Binding targets in the recipe"):

    python docs/benchmarks/2026-11-27-demo-binding/binding-variants.py D   # binding targets at weight 4
    python docs/benchmarks/2026-11-27-demo-binding/binding-variants.py E   # gates opened before binding

Each trains into /tmp/e3/{D,E}. The run measured had phases 1-3 (init, tower, recency, single) copied
there first from an earlier run of the same phases (bit-identical to `bound`'s), so only the binding
phase trained; without them the whole prefix trains first (about 12 more minutes).
"""

import sys
from dataclasses import replace

from owl3.demo.train import BOUND_PHASES, GateInit, train_demo

which = sys.argv[1]
binding = BOUND_PHASES[3]
if which == "D":  # binding targets at weight 4
    phases = (*BOUND_PHASES[:3], replace(binding, attention_loss_weight=4.0))
else:  # gates opened before the binding phase
    phases = (*BOUND_PHASES[:3], GateInit("gates", bias=3.0), binding)
train_demo(f"/tmp/e3/{which}", phases=phases, progress=False)
