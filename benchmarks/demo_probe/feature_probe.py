"""What do a demo model's visual features still hold? Fresh linear heads on frozen features.

    python benchmarks/demo_probe/feature_probe.py MODEL [MODEL ...] [--steps 200] [--projected]

For each checkpoint: owl3.demo.tower's heads (shape, colour, size, object, row, col, word, word_colour)
trained for STEPS steps (batches of 64 drawn pictures, AdamW 1e-2) on the frozen tower output (or, with
--projected, on the projector's output, what the hyper layers read), then held-out accuracy on 256
pictures of another stream. Tells whether question training wore away what the tower pretraining put in.
"""

import argparse
import random

import torch

from owl3.checkpoint import load_model
from owl3.demo.tower import TowerHeads, accuracy, losses, scene_batch

ap = argparse.ArgumentParser()
ap.add_argument("models", nargs="+")
ap.add_argument("--steps", type=int, default=200)
ap.add_argument("--projected", action="store_true")
args = ap.parse_args()
torch.set_num_threads(1)
for path in args.models:
    model = load_model(path).eval()
    size, patch = model.cfg.vision.image_size, model.cfg.vision.patch_size
    grid = size // patch

    def feats(x, model=model):
        with torch.no_grad():
            f = model.vision_model(x)
            return model.vision2text_model(f) if args.projected else f

    torch.manual_seed(0)
    dim = model.cfg.text.dim if args.projected else model.cfg.vision.dim
    heads = TowerHeads(dim)
    opt = torch.optim.AdamW(heads.parameters(), lr=1e-2, weight_decay=0.0)
    rng = random.Random("probe:0")
    for _ in range(args.steps):
        x, y = scene_batch(rng, 64, size, grid)
        loss = losses(heads(feats(x)), y)
        opt.zero_grad()
        loss.backward()
        opt.step()
    x, y = scene_batch(random.Random("probe-test:0"), 256, size, grid)
    print(path, accuracy(feats, heads, x, y), flush=True)
