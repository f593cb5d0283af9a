"""Which demo tower learns the world's scenes fastest under owl3.demo.tower's per-patch objective?

    python benchmarks/demo_probe/tower_pretrain_variants.py STEPS LR IMAGE_SIZE PATCH DIM LAYERS_USED [HEADS]

HEADS: comma-separated head names of owl3.demo.tower.HEADS (default all); the first version of the
objective was `shape,colour,size,word,word_colour` (no joint shape-colour head, no row/column heads).

A fresh random tower of that shape (normal(0, 0.02) init as owl3.demo.model), the heads of
owl3.demo.tower, batches of 64 pictures drawn on the fly, accuracy on 256 held-out pictures every 50 steps.
"""

import random
import sys
import time

import torch

from owl3.config import VisionConfig
from owl3.demo.tower import HEADS, TowerHeads, accuracy, losses, scene_batch
from owl3.model.vision import SiglipVisionModel

steps, lr, size, patch, dim, used = int(sys.argv[1]), float(sys.argv[2]), *map(int, sys.argv[3:7])
torch.set_num_threads(1)
torch.manual_seed(0)
cfg = VisionConfig(
    dim=dim, hidden_dim=4 * dim, n_layers=used + 1, n_heads=4, patch_size=patch, image_size=size
)
tower = SiglipVisionModel(cfg)
with torch.no_grad():
    for m in tower.modules():
        if isinstance(m, (torch.nn.Linear, torch.nn.Conv2d, torch.nn.Embedding)):
            m.weight.normal_(0, 0.02)
            if getattr(m, "bias", None) is not None:
                m.bias.zero_()
names = tuple(sys.argv[7].split(",")) if len(sys.argv) > 7 else tuple(HEADS)
heads = TowerHeads(dim, names)
params = [*tower.parameters(), *heads.parameters()]
opt = torch.optim.AdamW(params, lr=lr, weight_decay=0.0)
grid = size // patch
rng = random.Random("tower:0")
test = scene_batch(random.Random("tower-test:0"), 256, size, grid)
t0 = time.time()
for step in range(1, steps + 1):
    for g in opt.param_groups:
        g["lr"] = lr * min(1.0, step / 30)
    x, y = scene_batch(rng, 64, size, grid)
    loss = losses(heads(tower(x)), y)
    opt.zero_grad()
    loss.backward()
    torch.nn.utils.clip_grad_norm_(params, 1.0)
    opt.step()
    if step % 50 == 0:
        tower.eval()
        acc = accuracy(tower, heads, *test)
        tower.train()
        print(step, round(loss.item(), 3), acc, f"{time.time() - t0:.0f}s", flush=True)
