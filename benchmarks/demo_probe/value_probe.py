"""Do a demo model's hyper-layer values still carry place, size and colour? Linear probes per patch.

    python benchmarks/demo_probe/value_probe.py MODEL [MODEL ...]

For each hyper layer: the visual values (the V half of v_kv_proj after the shared input norm, all kv
heads) and the projected features of 256 drawn pictures (stream `vp:0`); a linear classifier per label
(row, column of the patch; size and colour of the object in its cell) fitted with Adam for 200 steps on
standardized inputs, accuracy on 128 other pictures (`vp:1`).
"""

import random
import sys

import torch
import torch.nn.functional as F

from owl3.checkpoint import load_model
from owl3.demo.tower import HEADS, scene_batch

torch.set_num_threads(1)
train_x, train_y = scene_batch(random.Random("vp:0"), 256, 84, 6)
test_x, test_y = scene_batch(random.Random("vp:1"), 128, 84, 6)


def probe(a: torch.Tensor, b: torch.Tensor, key: str) -> float:
    mu, sd = a.mean((0, 1)), a.std((0, 1)) + 1e-6
    a, b = (a - mu) / sd, (b - mu) / sd
    w = torch.zeros(a.shape[-1], HEADS[key], requires_grad=True)
    opt = torch.optim.Adam([w], lr=0.05)
    on_obj = key in ("size", "colour")
    mask = train_y["shape"] > 0 if on_obj else torch.ones_like(train_y["shape"], dtype=torch.bool)
    for _ in range(200):
        loss = F.cross_entropy(a[mask] @ w, train_y[key][mask])
        opt.zero_grad()
        loss.backward()
        opt.step()
    mask = test_y["shape"] > 0 if on_obj else torch.ones_like(test_y["shape"], dtype=torch.bool)
    return round(((b[mask] @ w).argmax(-1) == test_y[key][mask]).float().mean().item(), 3)


for path in sys.argv[1:]:
    m = load_model(path).eval()
    cfg = m.cfg.text
    hyper = [layer for layer in m.language_model.model.layers if layer.self_attn.is_hyper]
    for li, layer in enumerate(hyper, 1):

        def feats(x, layer=layer, m=m, cfg=cfg):
            with torch.no_grad():
                f = m.vision2text_model(m.vision_model(x))
                kv = layer.self_attn.v_kv_proj(layer.input_layernorm(f))
                v = kv.view(*f.shape[:2], cfg.n_kv_heads, 2, cfg.head_dim)[..., 1, :].flatten(-2)
                return v, f

        (va, fa), (vb, fb) = feats(train_x), feats(test_x)
        for name, a, b in (("values", va, vb), ("projected", fa, fb)):
            res = {k: probe(a, b, k) for k in ("row", "col", "size", "colour")}
            print(path, "hyper layer", li, name, res, flush=True)
