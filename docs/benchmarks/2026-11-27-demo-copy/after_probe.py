"""Which of the tokens after image X holds the asked colour, and which does the answer's attention read?

    python after_probe.py MODEL LAYOUT LAYER [N]

N "In Image X, what colour is the <shape>?" questions (2-8 images, half the distractors showing the shape)
in LAYOUT, teacher-forced to the position predicting the colour. For each of the 4 prompt tokens after
image X's <|image|>: a logistic read-out of the colour from the residual entering decoder layer LAYER
(1-based; fitted on 80%, scored on the rest) and the share of LAYER's self-attention (mean over heads, and
per head) that the answer position gives it."""

import sys
from pathlib import Path

import torch

from owl3.demo.world import COLOURS as PALETTE
from owl3.training.step import self_log_weights

COLOURS = list(PALETTE)
sys.path.insert(0, str(Path(__file__).resolve().parents[3] / "benchmarks" / "demo_probe"))
from common import colour_questions, held_out_readout, load_for_probe  # noqa: E402

model_dir, style, layer = sys.argv[1], sys.argv[2], int(sys.argv[3]) - 1
n_q = int(sys.argv[4]) if len(sys.argv) > 4 else 800
pipe, m, tok, lm = load_for_probe(model_dir)
entering = {}
lm.model.layers[layer].register_forward_pre_hook(lambda mod, args: entering.__setitem__("x", args[0]))
X, shares, ys = [[] for _ in range(4)], [], []
with torch.no_grad():
    for qn, words, ids, _, ctx, enc in colour_questions(pipe, style, n_q, record_self=layer):
        after = enc.media_starts[qn.target - 1] + 1
        w = self_log_weights(*ctx.record_self[layer], 0, ids.shape[1] - 1).exp()  # (H, T)
        shares.append(w[:, after : after + 4])
        for j in range(4):
            X[j].append(entering["x"][0, after + j].float())
        ys.append(COLOURS.index(words[-1]))
y = torch.tensor(ys)


def readout(x):
    return held_out_readout(x, y, len(COLOURS))


s = torch.stack(shares).mean(0)  # (H, 4)
text = [tok.decode([int(t)]) for t in ids[0, after : after + 4]]
print(
    f"{model_dir} ({style}), layer {layer + 1}, {len(y)} questions;"
    f" the last question's tokens after image X: {text}"
)
print("token after image X | read-out entering the layer | answer's attention share (mean; per head)")
for j in range(4):
    heads = " ".join(f"{v:.3f}" for v in s[:, j].tolist())
    print(f"+{j} | {readout(X[j]):.3f} | {s[:, j].mean():.3f}; {heads}")
