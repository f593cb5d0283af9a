from dataclasses import replace
from owl3.demo.train import BOUND_PHASES, train_demo
ph = list(BOUND_PHASES); ph[2] = replace(ph[2], steps=2400)
print(ph[2])
train_demo("/tmp/f1/LS", phases=tuple(ph), progress=False)
