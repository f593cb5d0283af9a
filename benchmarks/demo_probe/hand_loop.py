"""A hand-written AdamW loop on in-memory demo rows (no owl3.training), evaluated every 50 steps.

    python benchmarks/demo_probe/hand_loop.py INIT LR VISION_LR STEPS BATCH [KINDS [N_OBJECTS]]

INIT: a demo checkpoint (`python -m owl3.demo init DIR` for a random one); KINDS: comma-separated question
kinds (default colour); N_OBJECTS: objects per picture, 0 for the world's 1-4 (default 1).
"""

import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import Encoder, batch_loss, evaluate, make_rows  # noqa: E402

from owl3.checkpoint.load import load_model  # noqa: E402
from owl3.training.step import TrainStep  # noqa: E402

init, lr, vlr, steps, bs = (
    sys.argv[1],
    float(sys.argv[2]),
    float(sys.argv[3]),
    int(sys.argv[4]),
    int(sys.argv[5]),
)
kinds = tuple(sys.argv[6].split(",")) if len(sys.argv) > 6 else ("colour",)
n_objects = (int(sys.argv[7]) or None) if len(sys.argv) > 7 else 1
torch.set_num_threads(1)
torch.manual_seed(0)
model = load_model(init, dtype="float32", device="cpu").requires_grad_(True)
step = TrainStep(model, train_vision=True).train()
enc = Encoder(init)
vision = [p for n, p in model.named_parameters() if n.startswith(("vision_model", "vision2text"))]
rest = [p for p in model.parameters() if id(p) not in {id(v) for v in vision}]
opt = torch.optim.AdamW([{"params": rest, "lr": lr}, {"params": vision, "lr": vlr}], weight_decay=0.0)
test = make_rows(128, 12345, kinds, n_objects)
print("init", evaluate(step, enc, test), flush=True)
t0 = time.time()
for it in range(1, steps + 1):
    b = enc.batch(make_rows(bs, 1000 + it, kinds, n_objects))
    loss = batch_loss(step, b)
    opt.zero_grad()
    loss.backward()
    torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
    opt.step()
    if it % 50 == 0:
        with torch.no_grad():
            norm = model.vision2text_model(model.vision_model(b.pixel_values[:4])).norm(dim=-1).mean().item()
        print(
            it,
            round(loss.item(), 4),
            "featnorm",
            round(norm, 2),
            evaluate(step, enc, test),
            f"{time.time() - t0:.0f}s",
            flush=True,
        )
