"""bound recipe on a demo model with 28-px patches and another language-model shape.
python run2.py OUT THREADS STEP_FACTOR TOWER_STEPS FIELD=VALUE ...   (TextConfig fields; hyper_layers=1/6)"""
import sys
from dataclasses import replace
import owl3.config as C
from owl3.demo.train import BOUND_PHASES, Phase, TowerPhase, train_demo
out, threads, f, tower, *sets = sys.argv[1], int(sys.argv[2]), float(sys.argv[3]), int(sys.argv[4]), *sys.argv[5:]
base = C.preset("demo-cells")  # ran with demo + patch 28 built here, the same config
text = {}
for s in sets:
    k, v = s.split("=", 1)
    text[k] = tuple(int(x) for x in v.split("/")) if k == "hyper_layers" else (float(v) if "theta" in k else int(v))
cfg = replace(base, text=replace(base.text, **text))
C._PRESETS["demo28x"] = cfg
# (the run also rewrote the hyper layers' o_proj pattern of the lr scales here; train_demo now fills it in
# from the model's own hyper layers, the same pattern)
def fix(ph):
    if isinstance(ph, TowerPhase):
        return replace(ph, steps=tower)
    if isinstance(ph, Phase):
        return replace(ph, steps=round(ph.steps * f))
    return ph
phases = tuple(fix(ph) for ph in BOUND_PHASES)
print(cfg.text)
print([(p.name, getattr(p, "steps", 0)) for p in phases])
train_demo(out, phases=phases, preset="demo28x", threads=threads, workers=1, progress=False)
