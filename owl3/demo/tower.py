"""Pretrain the demo model's vision tower on the world's scene annotations, before any question.

The real mPLUG-Owl3 starts from a pretrained SigLIP tower; a random demo tower does not learn shapes
through the language model (docs/demo.md, rows 12-13: shape answers stay at chance while the same tower
trained alone learns shapes). This is the small-scale analogue of that pretraining: every visual token
of a picture (a 14-px patch of the 6x6 grid) is trained to name what its 3x3-grid cell holds (shape,
colour and size of the object there, or nothing; also shape and colour as one joint class, a code that
survives a hyper layer's averaging over several objects), which cell it is in itself (row and column: all
patches of a picture share one MI-RoPE position, so "where" must be in the features) and, in the row of a
written word, which word and in which colour. Each patch must so gather its whole cell (an object spans
up to 2x2 patches) and its whole row, which is what a hyper layer's cross-attention needs: any token of an
object says "big red star", so a question about the star can find it and read its colour in one step.

Pictures are drawn on the fly from the stream `tower:{seed}` (never the evaluation's `eval:` stream);
the heads are thrown away, only the tower's weights are written back into a copy of the checkpoint.
"""

from __future__ import annotations

import math
import random
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from owl3.demo.world import COLOURS, SHAPES, SIZES, WORDS, Scene, random_scene, render
from owl3.processing.pixels import images_to_pixels

# the label sets of the heads; index 0 is "nothing there"
HEADS: dict[str, int] = {
    "shape": 1 + len(SHAPES),
    "colour": 1 + len(COLOURS),
    "size": 1 + len(SIZES),
    "object": 1 + len(SHAPES) * len(COLOURS),  # shape and colour together: a code that survives averaging
    "row": 3,  # the patch's own cell: all patches of a picture share one MI-RoPE position, so "where"
    "col": 3,  # must be in the features
    "word": 1 + len(WORDS),
    "word_colour": 1 + len(COLOURS),
}
_COLOURS = tuple(COLOURS)


def patch_labels(scene: Scene, grid: int) -> dict[str, Tensor]:
    """For each of the grid x grid patches (row-major), the index of what its cell / row holds."""
    labels = {k: torch.zeros(grid * grid, dtype=torch.long) for k in HEADS}
    by_cell = {o.cell: o for o in scene.objects}
    for p in range(grid * grid):
        row, col = (p // grid) * 3 // grid, (p % grid) * 3 // grid
        labels["row"][p], labels["col"][p] = row, col
        o = by_cell.get(row * 3 + col)
        if o is not None:
            labels["object"][p] = 1 + SHAPES.index(o.shape) * len(COLOURS) + _COLOURS.index(o.colour)
            labels["shape"][p] = 1 + SHAPES.index(o.shape)
            labels["colour"][p] = 1 + _COLOURS.index(o.colour)
            labels["size"][p] = 1 + SIZES.index(o.size)
        w = scene.word
        if w is not None and w.row == row:
            labels["word"][p] = 1 + WORDS.index(w.text)
            labels["word_colour"][p] = 1 + _COLOURS.index(w.colour)
    return labels


def scene_batch(rng: random.Random, n: int, size: int, grid: int) -> tuple[Tensor, dict[str, Tensor]]:
    scenes = [random_scene(rng) for _ in range(n)]
    pixels = images_to_pixels([render(s, size) for s in scenes], size, workers=1)
    per = [patch_labels(s, grid) for s in scenes]
    return pixels, {k: torch.stack([p[k] for p in per]) for k in HEADS}


class TowerHeads(nn.Module):
    """One linear classifier per label set, applied to every visual token."""

    def __init__(self, dim: int) -> None:
        super().__init__()
        self.norm = nn.LayerNorm(dim)
        self.heads = nn.ModuleDict({k: nn.Linear(dim, n) for k, n in HEADS.items()})

    def forward(self, feats: Tensor) -> dict[str, Tensor]:
        h = self.norm(feats)
        return {k: head(h) for k, head in self.heads.items()}


def losses(logits: dict[str, Tensor], labels: dict[str, Tensor]) -> Tensor:
    """The sum of each head's cross-entropy over every patch."""
    return sum(F.cross_entropy(logits[k].flatten(0, 1), labels[k].flatten()) for k in logits)


@torch.no_grad()
def accuracy(tower: nn.Module, heads: TowerHeads, pixels: Tensor, labels: dict[str, Tensor]) -> dict:
    """Per-token accuracy of each head where there is something to name (objects; word rows; every patch
    for its own row and column), and of a whole object: shape, colour and size all right on every patch of
    its cell."""
    logits = heads(tower(pixels))
    out = {}
    obj = labels["shape"] > 0
    word = labels["word"] > 0
    for k in logits:
        where = word if k.startswith("word") else torch.ones_like(obj) if k in ("row", "col") else obj
        right = logits[k].argmax(-1) == labels[k]
        out[k] = round(right[where].float().mean().item(), 4) if where.any() else None
    whole = torch.stack([logits[k].argmax(-1) == labels[k] for k in ("shape", "colour", "size")]).all(0)
    out["whole"] = round(whole[obj].float().mean().item(), 4)
    return out


@dataclass
class TowerResult:
    steps: int
    seconds: float
    final: dict
    history: list[dict]


def pretrain_tower(
    model_dir: str | Path,
    out_dir: str | Path,
    *,
    steps: int = 1600,
    batch_size: int = 64,
    lr: float = 3e-3,
    seed: int = 0,
    eval_every: int = 100,
    threads: int | None = 1,
    say=print,
) -> TowerResult:
    """Train the tower of checkpoint `model_dir` with the per-patch scene heads; write the checkpoint with
    the trained tower to `out_dir` (every other weight and file copied unchanged). `threads`: torch CPU
    threads for this run (None: as they are); the count before is restored after."""
    from owl3.checkpoint import save_model
    from owl3.checkpoint.load import load_model

    with _threads(threads):
        torch.manual_seed(seed)
        model = load_model(model_dir)
        tower = model.vision_model.requires_grad_(True).train()
        size = tower.cfg.image_size
        grid = size // tower.cfg.patch_size
        head_layer = TowerHeads(tower.cfg.dim)
        params = [*tower.parameters(), *head_layer.parameters()]
        opt = torch.optim.AdamW(params, lr=lr, weight_decay=0.0)
        warm = max(1, steps // 20)  # linear warmup over 5% of the steps, then cosine from lr to lr / 10
        sched = torch.optim.lr_scheduler.LambdaLR(
            opt, lambda s: min(1.0, (s + 1) / warm) * (0.1 + 0.45 * (1 + math.cos(math.pi * s / steps)))
        )
        rng = random.Random(f"tower:{seed}")
        test = scene_batch(random.Random(f"tower-test:{seed}"), 256, size, grid)
        history = []
        t0 = time.perf_counter()
        for step in range(1, steps + 1):
            pixels, labels = scene_batch(rng, batch_size, size, grid)
            loss = losses(head_layer(tower(pixels)), labels)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            torch.nn.utils.clip_grad_norm_(params, 1.0)
            opt.step()
            sched.step()
            if step % eval_every == 0 or step == steps:
                tower.eval()
                acc = accuracy(tower, head_layer, *test)
                tower.train()
                rec = {
                    "step": step,
                    "loss": round(loss.item(), 4),
                    "seconds": round(time.perf_counter() - t0, 1),
                    **acc,
                }
                history.append(rec)
                say("tower " + " ".join(f"{k} {v}" for k, v in rec.items()))
        out = Path(out_dir)
        tower.eval().requires_grad_(False)
        save_model(model, out, copy_from=model_dir)  # tokenizer and generation config come along
        return TowerResult(steps, round(time.perf_counter() - t0, 1), history[-1] if history else {}, history)


@contextmanager
def _threads(n: int | None) -> Iterator[None]:
    """torch CPU threads set to `n` (None: left as they are) inside the block, the count before restored."""
    before = torch.get_num_threads()
    try:
        if n:
            torch.set_num_threads(n)
        yield
    finally:
        torch.set_num_threads(before)


__all__ = ["HEADS", "TowerHeads", "accuracy", "patch_labels", "pretrain_tower", "scene_batch"]
