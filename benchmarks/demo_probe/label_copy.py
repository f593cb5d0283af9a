"""Give a demo model a first-layer self-attention head that looks back a fixed number of tokens.

    python benchmarks/demo_probe/label_copy.py MODEL OUT [--offset 3] [--kv-head 1] [--strength 6] [--pairs 6]

In `Image k: <|image|> Image k+1: ...` the token right after image k (` Image`) sees image k at MI-RoPE
distance 0 and its label ` k` 3 tokens back: a head of the first layer that attends 3 tokens back puts
the label next to the image's summary, the first half of an induction circuit ("In Image k" -> the
tokens after image k). The query heads of `--kv-head` get a query bias c * (cos(w_i o), -sin(w_i o)) and
their key bias c in the `--pairs` fastest RoPE channel pairs, so their self-attention score is
c^2 * sum_i cos(w_i (distance - o)) / sqrt(d), highest at distance o.
"""

import argparse
import random

import torch

import owl3
from owl3.checkpoint import load_model, save_model
from owl3.demo.questions import multi_question
from owl3.model.layers import apply_rope

ap = argparse.ArgumentParser()
ap.add_argument("model")
ap.add_argument("out")
ap.add_argument("--offset", type=int, default=3)
ap.add_argument("--kv-head", type=int, default=1)
ap.add_argument("--strength", type=float, default=6.0)
ap.add_argument("--pairs", type=int, default=6)
args = ap.parse_args()
model = load_model(args.model)
cfg = model.cfg.text
attn = model.language_model.model.layers[0].self_attn
d, n_rep = cfg.head_dim, cfg.n_heads // cfg.n_kv_heads
w = cfg.rope_theta ** (-torch.arange(args.pairs, dtype=torch.float64) * 2 / d)
c, o, g = args.strength, args.offset, args.kv_head
with torch.no_grad():
    qb = attn.q_proj.bias.view(cfg.n_heads, d)
    kb = attn.k_proj.bias.view(cfg.n_kv_heads, d)
    qb[g * n_rep : (g + 1) * n_rep, : args.pairs] = (c * torch.cos(w * o)).float()
    qb[g * n_rep : (g + 1) * n_rep, d // 2 : d // 2 + args.pairs] = (-c * torch.sin(w * o)).float()
    kb[g, : args.pairs] = c
    kb[g, d // 2 : d // 2 + args.pairs] = 0.0
save_model(model, args.out, copy_from=args.model)
print(f"{args.out}: layer 1 heads of kv head {g} look {o} tokens back (strength {c}, {args.pairs} pairs)")

# check: the first layer's self-attention share, per head, of the token after each inner image on the
# token `offset` back (its label ` k` when offset is 3), over 10 five-image prompts
pipe = owl3.load(args.out)
layer = pipe.model.language_model.model.layers[0]
a, lm = layer.self_attn, pipe.model.language_model.model
rng, shares = random.Random("label:0"), []
for _ in range(10):
    qn = multi_question(rng, 5, "colour", hard=0.5)
    enc = pipe.encode(qn.prompt, qn.render_images(), [], cut=False)
    n = enc.input_ids.shape[0]
    with torch.no_grad():
        x = layer.input_layernorm(pipe.model.embed(enc.input_ids[None]))
        q = a.q_proj(x).view(1, n, cfg.n_heads, d).transpose(1, 2)
        k = a.k_proj(x).view(1, n, cfg.n_kv_heads, d).transpose(1, 2).repeat_interleave(n_rep, 1)
        cos, sin = lm.rope(torch.arange(n)[None], x.dtype)
        s = apply_rope(q, cos, sin) @ apply_rope(k, cos, sin).transpose(-1, -2) / d**0.5
        w = torch.softmax(s.masked_fill(torch.ones(n, n).triu(1).bool(), float("-inf")), -1)[0]
    shares.append(torch.stack([w[:, p + 1, p + 1 - o] for p in enc.media_starts[:-1]]).mean(0))
print("share on the token", o, "back, per head:", " ".join(f"{x:.2f}" for x in torch.stack(shares).mean(0)))
