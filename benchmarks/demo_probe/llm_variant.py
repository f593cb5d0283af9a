"""A demo checkpoint with another language model shape, keeping a trained vision tower.

    python benchmarks/demo_probe/llm_variant.py BASE OUT [FIELD=VALUE ...]

BASE: a demo checkpoint whose tower was pretrained (e.g. OUT/phase-1-tower of `owl3 demo-train`); FIELD:
a TextConfig field (rope_theta=1e4, dim=192, hidden_dim=768, n_heads=6, n_kv_heads=3,
hyper_layers=1/3/5), or recency=STRENGTH (owl3.demo.model.init_recency on kv head 0). The language
model and projector are freshly initialized as owl3.demo.model does (seed 0); the vision tower's weights
are copied from BASE. The probes of docs/demo.md start question phases from OUT.
"""

import sys
from dataclasses import fields, replace

from owl3.checkpoint import load_model, save_model
from owl3.demo.model import init_recency, init_weights
from owl3.model import Owl3Model

base, out, *sets = sys.argv[1:]
src = load_model(base)
types = {f.name: f.type for f in fields(src.cfg.text)}
changes, recency = {}, None
for s in sets:
    if s.startswith("recency="):  # recency=STRENGTH: owl3.demo.model.init_recency on kv head 0
        recency = float(s.split("=", 1)[1])
        continue
    key, value = s.split("=", 1)
    if key not in types:
        raise SystemExit(f"unknown TextConfig field {key!r}")
    if key == "hyper_layers":
        changes[key] = tuple(int(v) for v in value.split("/"))
    else:
        changes[key] = type(getattr(src.cfg.text, key))(float(value) if "e" in value else value)
cfg = replace(src.cfg, text=replace(src.cfg.text, **changes))
model = init_weights(Owl3Model(cfg), seed=0)
if recency:
    init_recency(model, strength=recency)
model.vision_model.load_state_dict(src.vision_model.state_dict())
save_model(model, out, copy_from=base)
print(f"{out}: {changes}; tower from {base}")
