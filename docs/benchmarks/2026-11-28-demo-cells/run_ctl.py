"""Control for G: the weak phase of `--recipe cells` on `bound` itself (14-px patches; the model shipped
before, put in place of a finished `bound` run's phases 1-6, which train_demo then skips).
python run_ctl.py OUT"""
import sys
from owl3.demo.train import CELLS_PHASES, train_demo
train_demo(sys.argv[1], phases=CELLS_PHASES, preset="demo", threads=1, workers=1, progress=False)
