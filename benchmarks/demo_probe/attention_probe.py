"""Where does a demo model's hyper attention look when it answers? Mass on the asked object.

    python benchmarks/demo_probe/attention_probe.py MODEL [--kinds position,colour,size,shape] [--n 40]
        [--images N]

Questions of each kind (stream `probe:0:KIND`; with N > 1 the paper's `Image 1: <|image|> ... In Image X,`
layout, half of the distractors hard), the answer teacher-forced up to its deciding word ("The square is
in the | bottom left.", "The square is | yellow."). At that last position, for every hyper layer and
query head: the share of cross-attention on the target image, and on the 4 patches of the asked object's
3x3 cell in it (the tower labels all of them with the object); a uniform head puts 1/N and 4/(36 N) there.
Also how often the model's next word is the right one.
"""

import argparse
import random

import torch

import owl3
from owl3.demo.probe import record_cross_attention
from owl3.demo.questions import multi_question
from owl3.demo.world import CELL_NAMES, COLOURS

ap = argparse.ArgumentParser()
ap.add_argument("model")
ap.add_argument("--kinds", default="position,colour,size,shape")
ap.add_argument("--n", type=int, default=40)
ap.add_argument("--images", type=int, default=1)
args = ap.parse_args()
torch.set_num_threads(1)
pipe = owl3.load(args.model)
m, tok = pipe.model, pipe.processor.tokenizer
grid = m.cfg.vision.image_size // m.cfg.vision.patch_size
per_image = grid * grid


def target_object(scene, kind, words):
    if kind == "position":
        return next(o for o in scene.objects if CELL_NAMES[o.cell] == " ".join(words[-2:]) or
                    CELL_NAMES[o.cell] == words[-1] == "center")  # fmt: skip
    if kind == "shape":  # "The red object is a star": the one object of that colour
        return next(o for o in scene.objects if o.colour == words[1])
    said = set(words[:-1])
    colour = next((c for c in COLOURS if c in said), None)
    return next(o for o in scene.objects if o.shape in said and colour in (None, o.colour))


for kind in args.kinds.split(","):
    rng = random.Random(f"probe:0:{kind}")
    on_image = on_cell = None
    right = 0
    for _ in range(args.n):
        qn = multi_question(rng, args.images, kind, hard=0.5)
        t = (qn.target or 1) - 1
        words = qn.answer.rstrip(".").split(" ")
        cut = 2 if kind == "position" and words[-1] != "center" else 1
        obj = target_object(qn.images[t], kind, words)
        enc = pipe.encode(qn.prompt, qn.render_images(), [], cut=False)
        ids = torch.cat([enc.input_ids, torch.tensor(tok.encode(" ".join(words[:-cut])).ids)]).view(1, -1)
        with torch.no_grad(), record_cross_attention() as scores:
            ctx = owl3.model.VisualContext.build([m.encode_media(enc.pixel_values)], [enc.media_starts])
            h = m.language_model.model(m.embed(ids), torch.arange(ids.shape[1]).view(1, -1), None, None, ctx)
            nxt = tok.decode([int(m.language_model.lm_head(h[:, -1]).argmax(-1))]).strip()
        right += nxt == words[-cut]
        cell = [t * per_image + p for p in range(per_image)
                if (p // grid) * 3 // grid * 3 + (p % grid) * 3 // grid == obj.cell]  # fmt: skip
        w = torch.stack([torch.softmax(sc[0, :, -1], -1) for sc in scores])  # (hyper layers, H, M)
        a = w[..., t * per_image : (t + 1) * per_image].sum(-1)
        c = w[..., cell].sum(-1)
        on_image = a if on_image is None else on_image + a
        on_cell = c if on_cell is None else on_cell + c
    n = args.n
    print(f"{kind} ({args.images} images): next word right {right}/{n}; attention share per head on")
    for li in range(on_cell.shape[0]):
        img = " ".join(f"{x:.2f}" for x in (on_image[li] / n).tolist())
        cel = " ".join(f"{x:.2f}" for x in (on_cell[li] / n).tolist())
        print(f"  hyper layer {li + 1}: target image {img} | object's cell {cel}")
