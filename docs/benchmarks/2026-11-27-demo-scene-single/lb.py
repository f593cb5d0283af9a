"""long single (2,400 steps), then bound's binding phase with twice the share of one-image rows (0.4)."""
from dataclasses import replace
from owl3.demo.train import BOUND_PHASES, train_demo
ph = list(BOUND_PHASES)
ph[2] = replace(ph[2], steps=2400)
ph[3] = replace(ph[3], mix=replace(ph[3].mix, single=0.4))
print(ph[3].mix)
train_demo("/tmp/f1/LB", phases=tuple(ph[:4]), progress=False)
