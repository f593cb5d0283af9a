"""lb.py's recipe to the end: bound with a 2,400-step single phase and 0.4 one-image share in binding."""
from dataclasses import replace
from owl3.demo.train import BOUND_PHASES, train_demo
ph = list(BOUND_PHASES)
ph[2] = replace(ph[2], steps=2400)
ph[3] = replace(ph[3], mix=replace(ph[3].mix, single=0.4))
train_demo("/tmp/f1/LB", phases=tuple(ph), progress=False)
