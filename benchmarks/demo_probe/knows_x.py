"""Does the answer know which image it was asked about? A read-out of X from the answer's residual.

    python benchmarks/demo_probe/knows_x.py MODEL [--n 800] [--images 8] [--layout official]

"In Image X, what colour is the <shape>?" among `--images` images (stream `knows-x`, half the distractors
showing the shape), in `--layout` (the model's own: `official` or `label_after`), the answer
teacher-forced up to its last word. After each decoder layer, the residual at that position; a linear
classifier of X (1..N) is fitted on 3/4 of the questions and scored on the rest (chance 1/N). To find
image X's tokens by its label, the answer must hold X (docs/demo.md, "The answer does not know X").
"""

import random

import torch
import torch.nn.functional as F
from common import (  # this folder (the script's) is on sys.path
    adam_readout,
    layer_states,
    list_probe_parser,
    load_one_thread,
    teacher_forced,
)

from owl3.demo.questions import multi_question

args = list_probe_parser(800).parse_args()
pipe = load_one_thread(args.model)
m = pipe.model
n_layers = len(m.language_model.model.layers)
rng = random.Random("knows-x")
feats: list[list[torch.Tensor]] = [[] for _ in range(n_layers)]
asked = []
for _ in range(args.n):
    qn = multi_question(rng, args.images, "colour", hard=0.5, style=args.layout)
    asked.append(qn.target - 1)
    words, enc, ids = teacher_forced(pipe, qn)
    with torch.no_grad():
        for i, x in layer_states(m, ids, enc):
            feats[i].append(x[0, -1].clone())
y = torch.tensor(asked)
n_train = args.n * 3 // 4
train = torch.arange(args.n) < n_train
print(f"{args.model} ({args.layout}): read-out of X (1..{args.images}) from the answer's residual, "
      f"fitted on {n_train}, scored on {args.n - n_train}; chance {1 / args.images:.2f}")  # fmt: skip
for i, vs in enumerate(feats):
    logits = adam_readout(torch.stack(vs), train, lambda z: F.cross_entropy(z, y[train]), args.images)
    print(f"  after layer {i}: {(logits.argmax(-1) == y[~train]).float().mean().item():.2f}")
