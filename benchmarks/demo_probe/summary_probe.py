"""Do the tokens after image k take in image k? The first hyper layer's attention right after each image.

    python benchmarks/demo_probe/summary_probe.py MODEL [--images 5] [--n 20]

Prompts `Image 1: <|image|> ... Image N: <|image|>. In Image X, what colour is the ...?` (stream
`summary:0`). For the three tokens after each inner image k (` Image`, ` k+1`, `:`), the share of each
hyper layer's cross-attention (per query head) on image k itself; attending to all visible images alike
gives ~1/k on average (printed as `uniform`).
"""

import argparse
import random

import torch

import owl3
from owl3.demo.probe import record_cross_attention
from owl3.demo.questions import multi_question

ap = argparse.ArgumentParser()
ap.add_argument("model")
ap.add_argument("--images", type=int, default=5)
ap.add_argument("--n", type=int, default=20)
args = ap.parse_args()
torch.set_num_threads(1)
pipe = owl3.load(args.model)
m = pipe.model
per_image = m.cfg.vision.n_tokens
rng, n_img = random.Random("summary:0"), args.images
total = None
for _ in range(args.n):
    qn = multi_question(rng, n_img, "colour", hard=0.5)
    enc = pipe.encode(qn.prompt, qn.render_images(), [], cut=False)
    ids = enc.input_ids.view(1, -1)
    with torch.no_grad(), record_cross_attention() as scores:
        ctx = owl3.model.VisualContext.build([m.encode_media(enc.pixel_values)], [enc.media_starts])
        m.language_model.model(m.embed(ids), torch.arange(ids.shape[1]).view(1, -1), None, None, ctx)
    seen = [torch.softmax(sc[0], -1).nan_to_num(0.0) for sc in scores]  # per hyper layer (H, L, M)
    s = enc.media_starts

    def on_image_before(w, off, s=s):  # (H,): mean over inner images k of the share of token s_k + off on k
        inner = [w[:, s[k] + off, k * per_image : (k + 1) * per_image].sum(-1) for k in range(n_img - 1)]
        return torch.stack(inner).mean(0)

    share = torch.stack([torch.stack([on_image_before(w, off) for off in (1, 2, 3)]) for w in seen])
    total = share if total is None else total + share
uniform = sum(1 / (k + 1) for k in range(n_img - 1)) / (n_img - 1)
print(f"{args.model}: share on the image just before (uniform {uniform:.2f}); rows: tokens +1, +2, +3")
for li, layer in enumerate(total / args.n):
    print(f"  hyper layer {li + 1}:")
    for off, row in zip((1, 2, 3), layer, strict=True):
        print(f"    +{off}: " + " ".join(f"{x:.2f}" for x in row.tolist()))
