"""What do the tokens after image k hold of image k? Linear read-outs of its word, its object count and
the colour of each of its shapes, from the residual stream of those tokens.

    python benchmarks/demo_probe/after_readout.py MODEL [--n 600] [--images 8] [--layout official]

Lists of `--images` random pictures (stream `after-readout`; every picture with a word, so that the word
read-out has one to read), in `--layout`. For each image but the last, the residual after each of the
first layers at each of the 4 tokens right after its `<|image|>` (in the official layout ` Image`, ` k+1`,
`:`, ` `; the answer reads there through its layer-2 look). Fitted on 3/4 of the lists, scored on the
rest: the word (12 classes), the number of objects (1-4) and, from one 64-way multi-label read-out of the
picture's shape-colour pairs, for each object the colour that read-out ranks first for its shape (what
"In Image k, what colour is the <shape>?" needs; 8 colours). A question about image k can only get from
these tokens what they hold (docs/demo.md, "The answer does not know X").
"""

import random

import torch
import torch.nn.functional as F
from common import (  # this folder is on sys.path
    adam_readout,
    layer_states,
    list_probe_parser,
    load_one_thread,
)

from owl3.demo.questions import list_prompt
from owl3.demo.world import COLOURS, SHAPES, WORDS, random_scene, render

ap = list_probe_parser(600)
ap.add_argument("--layers", type=int, default=3, help="read after layers 0..LAYERS-1")
args = ap.parse_args()
pipe = load_one_thread(args.model)
m, tok = pipe.model, pipe.processor.tokenizer
layers = m.language_model.model.layers[: args.layers]
image_id = tok.token_to_id("<|image|>")
colours = tuple(COLOURS)
rng = random.Random("after-readout")
feats: dict[tuple[int, int], list[torch.Tensor]] = {}
scenes, groups = [], []
for q in range(args.n):
    pics = [random_scene(rng, word=True) for _ in range(args.images)]
    prompt = list_prompt(args.images, "What do you see?", args.layout)
    enc = pipe.encode(prompt, [render(s) for s in pics], [], cut=False)
    ids = enc.input_ids[None]
    starts = (ids[0] == image_id).nonzero().flatten().tolist()
    with torch.no_grad():
        for i, x in layer_states(m, ids, enc, layers):
            for s in starts[:-1]:
                for d in range(4):
                    feats.setdefault((i, d), []).append(x[0, s + 1 + d].clone())
    scenes += pics[:-1]
    groups += [q] * (args.images - 1)
train = torch.tensor(groups) < args.n * 3 // 4
word = torch.tensor([WORDS.index(s.word.text) for s in scenes])
count = torch.tensor([len(s.objects) - 1 for s in scenes])
pairs = torch.zeros(len(scenes), len(SHAPES) * len(colours))
for j, s in enumerate(scenes):
    for o in s.objects:
        pairs[j, SHAPES.index(o.shape) * len(colours) + colours.index(o.colour)] = 1.0


held = [s for s, t in zip(scenes, train.tolist(), strict=True) if not t]
print(f"{args.model} ({args.layout}): {len(scenes)} pictures (a list of {args.images} minus the last), "
      f"read-outs scored on {len(held)}; chance: word 0.08, count ~0.25, colour 0.12")  # fmt: skip
print("after layer | token after the image | word | objects | colour of each shape")
for (i, d), vs in feats.items():
    a = torch.stack(vs)
    said = adam_readout(a, train, lambda z: F.cross_entropy(z, word[train]), len(WORDS)).argmax(-1)
    w_acc = said == word[~train]
    c_acc = adam_readout(a, train, lambda z: F.cross_entropy(z, count[train]), 4).argmax(-1) == count[~train]
    bce = lambda z: F.binary_cross_entropy_with_logits(z, pairs[train])  # noqa: E731
    logits = adam_readout(a, train, bce, pairs.shape[1])
    by_shape = logits.view(-1, len(SHAPES), len(colours))
    hits = [
        int(by_shape[j, SHAPES.index(o.shape)].argmax()) == colours.index(o.colour)
        for j, s in enumerate(held)
        for o in s.objects
    ]
    c_hit = sum(hits) / len(hits)
    print(f"{i} | +{d} | {w_acc.float().mean():.2f} | {c_acc.float().mean():.2f} | {c_hit:.2f}")
