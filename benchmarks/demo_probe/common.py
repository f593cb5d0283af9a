"""Shared pieces of the demo-model probes (docs/demo.md, "Issue 5: root cause").

Rows are drawn in memory from the demo world (owl3.demo), encoded with owl3's own training encoder, and
measured by `evaluate`: the answer loss with the right images and with the images rolled by one sample,
and teacher-forced exact-answer accuracy (every answer token the argmax).
"""

from __future__ import annotations

import argparse
import random

import torch

from owl3.demo.questions import IMAGE, ask
from owl3.demo.world import random_scene, render
from owl3.processing import Processor
from owl3.training.data import Record
from owl3.training.encode import IGNORE, SampleEncoder, collate

SIZE = 84  # the demo preset's image size


def make_rows(n: int, seed: int, kinds=("colour",), n_objects: int | None = 1):
    """n (scene, question) pairs of the given kinds; n_objects=None draws the world's 1-4 objects."""
    rng = random.Random(seed)
    rows = []
    while len(rows) < n:
        scene = random_scene(rng, n_objects=n_objects, word=False)
        qa = ask(scene, rng.choice(kinds), rng)
        if qa is not None:
            rows.append((scene, qa))
    return rows


class Encoder:
    def __init__(self, model_dir: str) -> None:
        self.proc = Processor.from_dir(model_dir, SIZE)
        self.enc = SampleEncoder(self.proc, seq_len=8192, frames=8, crop_prob=0.0, seed=0)

    def batch(self, rows):
        items = []
        for scene, qa in rows:
            turns = (
                {"role": "user", "content": f"{IMAGE}\n{qa.question}"},
                {"role": "assistant", "content": qa.answer},
            )
            items.append(self.enc(Record("x", 1, turns, (render(scene, SIZE),))))
        return collate(items, self.proc.pad_token_id)


def batch_loss(step, b):
    return step(b.input_ids, b.labels, b.pixel_values, b.n_media, b.media_starts) / b.n_targets


@torch.no_grad()
def evaluate(step, enc: Encoder, rows, bs: int = 64) -> dict:
    step.eval()
    right = rolled = 0.0
    correct = n = 0
    for i in range(0, len(rows), bs):
        chunk = rows[i : i + bs]
        b = enc.batch(chunk)
        right += batch_loss(step, b).item() * len(chunk)
        bx = enc.batch(chunk)
        bx.pixel_values = b.pixel_values[torch.roll(torch.arange(b.pixel_values.shape[0]), 1)]
        rolled += batch_loss(step, bx).item() * len(chunk)
        t = b.input_ids.shape[1]
        vis = step.visual(b.pixel_values, b.n_media, b.media_starts, len(chunk), b.input_ids.device)
        logits = step.model(b.input_ids, torch.arange(t).expand(len(chunk), t), None, None, vis)
        pred, tgt = logits[:, :-1].argmax(-1), b.labels[:, 1:]
        correct += int(((pred == tgt) | (tgt == IGNORE)).all(1).sum())
        n += len(chunk)
    step.train()
    return {"right": round(right / n, 4), "rolled": round(rolled / n, 4), "acc": round(correct / n, 3)}


def held_out_readout(features: list, labels, n_classes: int, train_share: float = 0.8) -> float:
    """Accuracy of a logistic read-out (L-BFGS, small L2) fitted on the first `train_share` of the rows
    (standardised by their mean and spread) and scored on the rest; features: one vector per row."""
    x = torch.stack(features)
    cut = int(train_share * len(labels))
    mu, sd = x[:cut].mean(0), x[:cut].std(0) + 1e-6
    x = (x - mu) / sd
    w = torch.zeros(x.shape[1], n_classes, requires_grad=True)
    b = torch.zeros(n_classes, requires_grad=True)
    opt = torch.optim.LBFGS([w, b], max_iter=300)

    def closure():
        opt.zero_grad()
        loss = torch.nn.functional.cross_entropy(x[:cut] @ w + b, labels[:cut]) + 1e-3 * (w**2).sum()
        loss.backward()
        return loss

    opt.step(closure)
    return ((x[cut:] @ w + b).argmax(-1) == labels[cut:]).float().mean().item()


def adam_readout(x: torch.Tensor, train: torch.Tensor, loss_fn, n_out: int) -> torch.Tensor:
    """A linear read-out (Adam, lr 0.02, 300 steps, small L2) of `x` (rows, standardised by the training
    rows' mean and spread), fitted where `train` (a row mask) by `loss_fn(logits)`; returns the logits of
    the other rows."""
    x = (x - x[train].mean(0)) / (x[train].std(0) + 1e-6)
    w = torch.zeros(x.shape[1], n_out, requires_grad=True)
    opt = torch.optim.Adam([w], lr=0.02)
    for _ in range(300):
        loss = loss_fn(x[train] @ w) + 1e-3 * w.pow(2).sum()
        opt.zero_grad()
        loss.backward()
        opt.step()
    return (x[~train] @ w).detach()


def teacher_forced(pipe, qn):
    """Question `qn` encoded with its answer teacher-forced up to its last word: (the answer's words, the
    encoding of the prompt and pictures, input ids (1, T) ending where the last word is predicted)."""
    words = qn.answer.rstrip(".").split(" ")
    enc = pipe.encode(qn.prompt, qn.render_images(), [], cut=False)
    prefix = torch.tensor(pipe.processor.tokenizer.encode(" ".join(words[:-1])).ids)
    return words, enc, torch.cat([enc.input_ids, prefix])[None]


def layer_states(m, ids: torch.Tensor, enc, layers=None):
    """Run the LLM of model `m` layer by layer on `ids` (1, T) with the pictures of encoding `enc`,
    yielding (layer index, the residual (1, T, D) after it), for `layers` (default all)."""
    import owl3.model

    ctx = owl3.model.VisualContext.build([m.encode_media(enc.pixel_values)], [enc.media_starts])
    x = m.embed(ids)
    pos = torch.arange(ids.shape[1])[None]
    rope = m.language_model.model.rope
    cos_sin = rope(pos, x.dtype)
    for i, layer in enumerate(layers if layers is not None else m.language_model.model.layers):
        x = layer(x, pos, rope, None, None, ctx, cos_sin)
        yield i, x


def colour_questions(pipe, style: str, n: int, record_self: int | None = None):
    """n "In Image X, what colour is the <shape>?" questions among 2-8 images (half the distractors
    showing the shape; stream `copy-probe:0`) in layout `style`, each run through the LLM teacher-forced up
    to the position that predicts the colour word. Yields (question, answer words, input ids (1, T), the
    final hidden states (1, T, D), the visual context, the encoding); `record_self` keeps that decoder
    layer's rotated queries and keys in the context."""
    import owl3.model
    from owl3.demo.questions import multi_question

    m, tok = pipe.model, pipe.processor.tokenizer
    rng = random.Random("copy-probe:0")
    for _ in range(n):
        qn = multi_question(rng, rng.randint(2, 8), "colour", hard=0.5, style=style)
        words = qn.answer.rstrip(".").split(" ")
        enc = pipe.encode(qn.prompt, qn.render_images(), [], cut=False)
        prefix = tok.encode(" ".join(words[:-1])).ids
        ids = torch.cat([enc.input_ids, torch.tensor(prefix)]).view(1, -1)
        ctx = owl3.model.VisualContext.build([m.encode_media(enc.pixel_values)], [enc.media_starts])
        if record_self is not None:
            ctx.record_self = {record_self: None}
        h = m.language_model.model(m.embed(ids), torch.arange(ids.shape[1])[None], None, None, ctx)
        yield qn, words, ids, h, ctx, enc


def load_for_training(model_dir):
    """A checkpoint for a training probe: one torch thread, seed 0, train mode, the vision tower frozen.
    Returns (pipeline, model, tokenizer, the trainable parameters)."""
    import owl3

    torch.set_num_threads(1)
    torch.manual_seed(0)
    pipe = owl3.load(model_dir)
    m = pipe.model
    m.train().requires_grad_(True)
    m.vision_model.requires_grad_(False)
    return pipe, m, pipe.processor.tokenizer, [p for p in m.parameters() if p.requires_grad]


def list_probe_parser(n: int) -> argparse.ArgumentParser:
    """The command line of the probes that ask about a list of pictures: MODEL, `--n` questions (default
    `n`), `--images` per list (8) and `--layout`; a probe adds its own options."""
    ap = argparse.ArgumentParser()
    ap.add_argument("model")
    ap.add_argument("--n", type=int, default=n)
    ap.add_argument("--images", type=int, default=8)
    ap.add_argument("--layout", default="official", choices=("official", "label_after"))
    return ap


def load_one_thread(model_dir):
    """A checkpoint's pipeline with one torch thread (a probe that runs beside others)."""
    import owl3

    torch.set_num_threads(1)
    return owl3.load(model_dir)


def load_for_probe(model_dir):
    """A checkpoint for an inference probe: two torch threads, seed 0, eval mode. Returns (pipeline, model,
    tokenizer, language model)."""
    import owl3

    torch.set_num_threads(2)
    torch.manual_seed(0)
    pipe = owl3.load(model_dir)
    m = pipe.model.eval()
    return pipe, m, pipe.processor.tokenizer, m.language_model


def target_cell(scene, kind: str, words: list[str]) -> int:
    """The 3x3 cell of the object an answer about `scene` is read from: `words` are the answer's words
    ("The red star is in the top left" -> the top-left cell); kinds colour, shape, size, position."""
    from owl3.demo.world import CELL_NAMES, COLOURS

    if kind == "position":
        name = "center" if words[-1] == "center" else " ".join(words[-2:])
        return next(o for o in scene.objects if CELL_NAMES[o.cell] == name).cell
    if kind == "shape":
        return next(o for o in scene.objects if o.colour == words[1]).cell
    said = set(words[:-1])
    colour = next((c for c in COLOURS if c in said), None)
    return next(o for o in scene.objects if o.shape in said and colour in (None, o.colour)).cell
