"""Where does the asked colour get lost on its way to the answer?

    python copy_probe.py MODEL LAYOUT [N]

N "In Image X, what colour is the <shape>?" questions among 2-8 images (half the distractors showing the
shape), asked in LAYOUT, teacher-forced up to the position that predicts the colour word. At that position,
after every decoder layer: the logit lens (final norm + LM head, argmax over the 8 colour words) and a
logistic read-out of the answer's colour (fitted on 80%, scored on the rest); the same read-out from each
layer's attention output (what the layer adds through attention, before the residual sum). Then what the
model says: the right colour, the colour of the same shape in another image, or another colour."""

import sys
from pathlib import Path

import torch

from owl3.demo.world import COLOURS as PALETTE

COLOURS = list(PALETTE)
sys.path.insert(0, str(Path(__file__).resolve().parents[3] / "benchmarks" / "demo_probe"))
from common import colour_questions, held_out_readout, load_for_probe  # noqa: E402

model_dir, style = sys.argv[1], sys.argv[2]
n_q = int(sys.argv[3]) if len(sys.argv) > 3 else 800
pipe, m, tok, lm = load_for_probe(model_dir)
layers = lm.model.layers
colour_ids = [tok.encode(" " + c).ids for c in COLOURS]
assert all(len(i) == 1 for i in colour_ids), colour_ids
colour_ids = torch.tensor([i[0] for i in colour_ids])
resid, attn = {}, {}
for i, lay in enumerate(layers):
    lay.register_forward_hook(lambda mod, inp, out, i=i: resid.__setitem__(i, out))
    lay.self_attn.register_forward_hook(lambda mod, inp, out, i=i: attn.__setitem__(i, out))
R, A, ys, said = [[] for _ in layers], [[] for _ in layers], [], {"right": 0, "other image": 0, "other": 0}
with torch.no_grad():
    for qn, words, _, h, _, _ in colour_questions(pipe, style, n_q):
        colour, shape = words[-1], words[1]
        pred = COLOURS[int(lm.lm_head(h[0, -1])[colour_ids].argmax())]
        others = {
            o.colour
            for k, s in enumerate(qn.images)
            if k != qn.target - 1
            for o in s.objects
            if o.shape == shape
        }
        said["right" if pred == colour else "other image" if pred in others else "other"] += 1
        for i in range(len(layers)):
            R[i].append(resid[i][0, -1].float())
            A[i].append(attn[i][0, -1].float())
        ys.append(COLOURS.index(colour))
y = torch.tensor(ys)


def readout(x):
    return held_out_readout(x, y, len(COLOURS))


print(
    f"{model_dir} ({style}): {len(y)} questions; said: "
    + ", ".join(f"{k} {v / len(y):.3f}" for k, v in said.items())
)
print("layer | logit lens | read-out of the residual | read-out of the attention output")
with torch.no_grad():
    lens = [
        ((lm.lm_head(lm.model.norm(torch.stack(R[i])))[:, colour_ids]).argmax(-1) == y).float().mean().item()
        for i in range(len(layers))
    ]
for i in range(len(layers)):
    hyper = " (hyper)" if layers[i].self_attn.is_hyper else ""
    print(f"{i + 1}{hyper} | {lens[i]:.3f} | {readout(R[i]):.3f} | {readout(A[i]):.3f}", flush=True)
