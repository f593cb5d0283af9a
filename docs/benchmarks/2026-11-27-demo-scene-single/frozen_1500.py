from dataclasses import replace
from owl3.demo.train import BOUND_PHASES, train_demo
ph = list(BOUND_PHASES)
ph[3] = replace(ph[3], steps=1500, train_vision=False)
ph[5] = replace(ph[5], train_vision=False)
for p in ph: print(p)
train_demo("/tmp/f1/F", phases=tuple(ph), progress=False)
