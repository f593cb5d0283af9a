"""`python -m owl3.demo check MODEL DATA`: does a model use its images? A cheap training-time probe.

On the first `n` one-image rows of DATA (ms-swift JSONL or LLaVA JSON) it prints the answer loss (per
answer token, the training loss) with the right images, with the images rolled by one across the batch,
and with black images; a model that has learned to see has a clearly lower loss with the right images.
It also prints the norm of the projected visual features and of the loss gradient reaching them: when the
norm runs away the gradient vanishes and the vision path stops learning (docs/demo.md).
"""

from __future__ import annotations

from pathlib import Path

import torch
import torch.nn.functional as F


def vision_check(model_dir: str | Path, data: str | Path, n: int = 16) -> dict[str, float]:
    from owl3.checkpoint.load import load_model
    from owl3.model import VisualContext
    from owl3.processing import Processor
    from owl3.training.data import read_data
    from owl3.training.encode import IGNORE, SampleEncoder, collate

    model = load_model(model_dir, dtype="float32", device="cpu").eval()
    proc = Processor.from_dir(model_dir, model.cfg.image_size)
    records, _ = read_data([str(data)], None)
    enc = SampleEncoder(proc, seq_len=8192, frames=8, crop_prob=0.0, seed=0)
    items = []
    for r in records:
        s = enc(r)
        if getattr(s, "media_starts", None) is not None and len(s.media_starts) == 1:
            items.append(s)
        if len(items) == n:
            break
    b = collate(items, proc.pad_token_id)
    m = model
    t = b.input_ids.shape[1]
    positions = torch.arange(t).expand(len(items), t)
    target = b.labels[:, 1:]
    keep = target != IGNORE

    def loss(pixels: torch.Tensor, grad: bool = False) -> tuple[torch.Tensor, torch.Tensor]:
        feats = m.vision2text_model(m.vision_model(pixels)).detach().requires_grad_(grad)
        ctx = VisualContext.build([feats[i : i + 1] for i in range(len(items))], b.media_starts)
        ctx.recompute = True
        h = m.language_model.model(m.embed(b.input_ids), positions, None, None, ctx)
        logits = m.language_model.lm_head(h[:, :-1][keep]).float()
        return F.cross_entropy(logits, target[keep]), feats

    right, feats = loss(b.pixel_values, grad=True)
    right.backward()
    with torch.no_grad():
        rolled = loss(b.pixel_values[torch.roll(torch.arange(len(items)), 1)])[0]
        black = loss(torch.full_like(b.pixel_values, -1.0))[0]
    return {
        "samples": len(items),
        "loss_right_images": round(right.item(), 4),
        "loss_rolled_images": round(rolled.item(), 4),
        "loss_black_images": round(black.item(), 4),
        "feature_norm": round(feats.norm().item(), 2),
        "feature_grad_norm": float(f"{feats.grad.norm().item():.3g}"),
    }


__all__ = ["vision_check"]
