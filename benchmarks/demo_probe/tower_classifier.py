"""Can the demo vision tower learn shapes at all? Its features, mean-pooled, into a linear 8-way shape
classifier, trained on one-object pictures (no language model in the way).

    python benchmarks/demo_probe/tower_classifier.py INIT [STEPS] [LR]
"""

import random
import sys
import time

import torch
import torch.nn.functional as F

from owl3.checkpoint.load import load_model
from owl3.demo.world import SHAPES, random_scene, render
from owl3.inference.pixels import images_to_pixels

init = sys.argv[1]
steps = int(sys.argv[2]) if len(sys.argv) > 2 else 500
lr = float(sys.argv[3]) if len(sys.argv) > 3 else 1e-3
torch.set_num_threads(1)
torch.manual_seed(0)
tower = load_model(init).vision_model.requires_grad_(True).train()
head = torch.nn.Linear(tower.cfg.dim, len(SHAPES))
opt = torch.optim.AdamW([*tower.parameters(), *head.parameters()], lr=lr, weight_decay=0.0)


def batch(n: int, seed: int):
    rng = random.Random(seed)
    scenes = [random_scene(rng, n_objects=1, word=False) for _ in range(n)]
    pixels = images_to_pixels([render(s, 84) for s in scenes], 84)
    return pixels, torch.tensor([SHAPES.index(s.objects[0].shape) for s in scenes])


def logits(pixels):
    return head(tower(pixels).mean(1))


test_x, test_y = batch(256, 12345)
t0 = time.time()
for it in range(1, steps + 1):
    x, y = batch(64, 1000 + it)
    loss = F.cross_entropy(logits(x), y)
    opt.zero_grad()
    loss.backward()
    opt.step()
    if it % 50 == 0:
        with torch.no_grad():
            acc = (logits(test_x).argmax(-1) == test_y).float().mean().item()
        print(it, round(loss.item(), 3), "test acc", round(acc, 3), f"{time.time() - t0:.0f}s", flush=True)
