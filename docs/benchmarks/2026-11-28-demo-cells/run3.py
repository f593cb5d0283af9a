"""A (bound on 28-px patches) plus a last phase for the weak one-image kinds: half the rows one image,
exists drawn 4x, count_colour / shape / size 2x (position 3x as in `all`), absence targets, grounding and
binding targets as in `all`. Resumes A's finished phases when they are copied into OUT.
python run3.py OUT THREADS STEPS LR"""
import sys
from dataclasses import replace
import owl3.config as C
from owl3.demo.train import ALL, BOUND_PHASES, WEIGHTED_KINDS, train_demo
base = C.preset("demo")
C._PRESETS["demo28"] = replace(base, vision=replace(base.vision, patch_size=28))
out, threads, steps, lr = sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), float(sys.argv[4])
last = BOUND_PHASES[-1]
kinds = (*WEIGHTED_KINDS, "exists", "exists", "exists", "count_colour", "shape", "size")
mix = replace(last.mix, single=0.5, multi=0.3, which=0.05, video=0.15, kinds=kinds, absent=True)
weak = replace(last, name="weak", mix=mix, steps=steps, lr=lr, min_lr=lr / 10)
phases = (*BOUND_PHASES, weak)
print(weak)
train_demo(out, phases=phases, preset="demo28", threads=threads, workers=1, progress=False)
