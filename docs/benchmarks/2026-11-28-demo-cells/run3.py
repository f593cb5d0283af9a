"""A (bound on 28-px patches) plus a last phase for the weak one-image kinds: half the rows one image,
exists drawn 4x, count_colour / shape / size 2x (position 3x as in `all`), absence targets, grounding and
binding targets as in `all`. Resumes A's finished phases when they are copied into OUT.
python run3.py OUT THREADS STEPS LR"""
import sys
from dataclasses import replace
from owl3.demo.train import CELLS_PHASES, train_demo
out, threads, steps, lr = sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), float(sys.argv[4])
# the run built this phase here; it is now the `weak` phase of `--recipe cells` (1500 5e-4 gives it exactly)
weak = replace(CELLS_PHASES[-1], steps=steps, lr=lr, min_lr=lr / 10)
phases = (*CELLS_PHASES[:-1], weak)
print(weak)
train_demo(out, phases=phases, preset="demo-cells", threads=threads, workers=1, progress=False)
