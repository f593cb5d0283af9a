"""Where is the place of the asked object lost? Linear probes of the residual stream at the deciding word.

    python benchmarks/demo_probe/residual_probe.py MODEL [--n 400]

One-image position questions (stream `residual:0`), the answer teacher-forced up to the row word ("The
square is in the | bottom left."). At that position: the hidden state after the embedding and after each
layer; for each hyper layer its cross-attention output before the gate, the gate, and what the gated
branch adds (before o_proj). A linear classifier of the object's row (top / middle / bottom) is fitted on
3/4 of the questions and scored on the rest; also the model's own row word accuracy.
"""

import argparse
import random

import torch
import torch.nn.functional as F

import owl3
import owl3.model.text as text
from owl3.demo.questions import single_question
from owl3.demo.world import CELL_NAMES

ap = argparse.ArgumentParser()
ap.add_argument("model")
ap.add_argument("--n", type=int, default=400)
args = ap.parse_args()
torch.set_num_threads(1)
pipe = owl3.load(args.model)
m, tok = pipe.model, pipe.processor.tokenizer
layers = m.language_model.model.layers
states: dict[str, torch.Tensor] = {}
real_gate = text.gate


def gate(a_self, a_cross, seen, gate_proj, all_seen=False):
    out = real_gate(a_self, a_cross, seen, gate_proj, all_seen)
    k = 1 + sum(key.startswith("cross") for key in states) // 3
    states[f"cross {k}: attention output"] = a_cross[0, :, -1].flatten()
    states[f"cross {k}: gate"] = gate_proj(a_self)[0, :, -1].flatten()
    states[f"cross {k}: gated, what it adds before o_proj"] = (out - a_self)[0, :, -1].flatten()
    return out


text.gate = gate
feats, rows, right = {}, [], 0
rng = random.Random("residual:0")
for _ in range(args.n):
    qn = single_question(rng, "position")
    words = qn.answer.rstrip(".").split(" ")
    name = "center" if words[-1] == "center" else " ".join(words[-2:])
    cut = 1 if name == "center" else 2
    rows.append(CELL_NAMES.index(name) // 3)
    enc = pipe.encode(qn.prompt, qn.render_images(), [], cut=False)
    ids = torch.cat([enc.input_ids, torch.tensor(tok.encode(" ".join(words[:-cut])).ids)])[None]
    states.clear()
    with torch.no_grad():
        ctx = owl3.model.VisualContext.build([m.encode_media(enc.pixel_values)], [enc.media_starts])
        x = m.embed(ids)
        pos = torch.arange(ids.shape[1])[None]
        cos_sin = m.language_model.model.rope(pos, x.dtype)
        states["embedding"] = x[0, -1]
        for i, layer in enumerate(layers, 1):
            x = layer(x, pos, m.language_model.model.rope, None, None, ctx, cos_sin)
            states[f"after layer {i}"] = x[0, -1]
        word = tok.decode([int(m.language_model.lm_head(m.language_model.model.norm(x))[0, -1].argmax())])
    right += word.strip() == words[-cut]
    for k, v in states.items():
        feats.setdefault(k, []).append(v.clone())
y = torch.tensor(rows)
n_train = args.n * 3 // 4
print(f"{args.model}: the model's row word right {right}/{args.n}; row probe accuracy on {args.n - n_train}:")
for k, vs in feats.items():
    a = torch.stack(vs)
    a = (a - a[:n_train].mean(0)) / (a[:n_train].std(0) + 1e-6)
    w = torch.zeros(a.shape[1], 3, requires_grad=True)
    opt = torch.optim.Adam([w], lr=0.02)
    for _ in range(300):
        loss = F.cross_entropy(a[:n_train] @ w, y[:n_train]) + 1e-3 * w.pow(2).sum()
        opt.zero_grad()
        loss.backward()
        opt.step()
    acc = ((a[n_train:] @ w).argmax(-1) == y[n_train:]).float().mean().item()
    print(f"  {k}: {acc:.2f}")
