"""bound recipe on a demo model with 28-px patches and another language-model shape.
python run2.py OUT THREADS STEP_FACTOR TOWER_STEPS FIELD=VALUE ...   (TextConfig fields; hyper_layers=1/6)"""
import sys
from dataclasses import fields, replace
import owl3.config as C
from owl3.demo.train import BOUND_PHASES, HYPER_O_PROJ, Phase, TowerPhase, train_demo
out, threads, f, tower, *sets = sys.argv[1], int(sys.argv[2]), float(sys.argv[3]), int(sys.argv[4]), *sys.argv[5:]
base = C.preset("demo")
types = {x.name: x.type for x in fields(base.text)}
text = {}
for s in sets:
    k, v = s.split("=", 1)
    text[k] = tuple(int(x) for x in v.split("/")) if k == "hyper_layers" else (float(v) if "theta" in k else int(v))
cfg = replace(base, text=replace(base.text, **text), vision=replace(base.vision, patch_size=28))
C._PRESETS["demo28x"] = cfg
o_proj = rf"layers\.({'|'.join(str(i - 1) for i in cfg.text.hyper_layers)})\.self_attn\.o_proj"
def fix(ph):
    if isinstance(ph, TowerPhase):
        return replace(ph, steps=tower)
    if isinstance(ph, Phase):
        scales = tuple((o_proj if p == HYPER_O_PROJ else p, x) for p, x in ph.lr_scales)
        return replace(ph, steps=round(ph.steps * f), lr_scales=scales)
    return ph
phases = tuple(fix(ph) for ph in BOUND_PHASES)
print(cfg.text)
print([(p.name, getattr(p, "steps", 0), getattr(p, "lr_scales", None)) for p in phases])
train_demo(out, phases=phases, preset="demo28x", threads=threads, workers=1, progress=False)
