"""Per-kind exact-answer accuracy and sample predictions while training on one-object colour + shape rows.

    python benchmarks/demo_probe/per_kind.py INIT [STEPS]

Prints, every 100 steps, the accuracy of colour and of shape questions on 64 held-out rows and three
teacher-forced predictions (what docs/demo.md's "copy or see" finding is read from).
"""

import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import IGNORE, Encoder, batch_loss, make_rows  # noqa: E402

from owl3.checkpoint.load import load_model  # noqa: E402
from owl3.training.step import TrainStep  # noqa: E402

init, steps = sys.argv[1], int(sys.argv[2]) if len(sys.argv) > 2 else 400
torch.set_num_threads(1)
torch.manual_seed(0)
model = load_model(init).requires_grad_(True)
step = TrainStep(model, train_vision=True).train()
enc = Encoder(init)
opt = torch.optim.AdamW(model.parameters(), lr=1e-3, weight_decay=0.0)
kinds = ("colour", "shape")
test = make_rows(64, 12345, kinds, 1)


@torch.no_grad()
def report(it: int) -> None:
    step.eval()
    b = enc.batch(test)
    t = b.input_ids.shape[1]
    vis = step.visual(b.pixel_values, b.n_media, b.media_starts, len(test), b.input_ids.device)
    logits = step.model(b.input_ids, torch.arange(t).expand(len(test), t), None, None, vis)
    pred, tgt = logits[:, :-1].argmax(-1), b.labels[:, 1:]
    keep = tgt != IGNORE
    ok = ((pred == tgt) | ~keep).all(1)
    for kind in kinds:
        idx = [i for i, (_, qa) in enumerate(test) if qa.kind == kind]
        print(it, kind, "acc", round(ok[idx].float().mean().item(), 2), end=" | ")
    for i in range(3):
        said = enc.proc.tokenizer.decode(pred[i][keep[i]].tolist())
        print(f"\n    {test[i][1].question} -> {said!r} want {test[i][1].answer!r}", end="")
    print(flush=True)
    step.train()


for it in range(1, steps + 1):
    loss = batch_loss(step, enc.batch(make_rows(32, 1000 + it, kinds, 1)))
    opt.zero_grad()
    loss.backward()
    torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
    opt.step()
    if it % 100 == 0:
        report(it)
