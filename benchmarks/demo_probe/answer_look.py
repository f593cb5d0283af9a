"""Where does the answer look among N images? Its self-attention, layer by layer.

    python benchmarks/demo_probe/answer_look.py MODEL [--kind colour] [--n 200] [--images 8]
        [--layout official]

"In Image X, ...?" questions of `--kind` among `--images` images (stream `answer-look:KIND`, half the
distractors showing the asked shape), in `--layout`, the answer teacher-forced up to its last word. At
that position, for each decoder layer, the self-attention share (mean over heads) on the (up to) 4 tokens
right after image X's `<|image|>`, on those after each other image, on the question (the user turn's
tokens after the list's closing `.`) and on the `<|image|>` tokens; and how often the model says the last
word right (argmax). After-tokens stop at the list's end: after the last image of the official layout
only its `.` is one.
"""

import random

import torch
from common import list_probe_parser, load_one_thread, teacher_forced  # this folder is on sys.path

import owl3
from owl3.demo.questions import multi_question
from owl3.model.layers import repeat_kv

ap = list_probe_parser(200)
ap.add_argument("--kind", default="colour")
args = ap.parse_args()
pipe = load_one_thread(args.model)
m, tok = pipe.model, pipe.processor.tokenizer
n_layers = len(m.language_model.model.layers)
image_id = tok.token_to_id("<|image|>")
rng = random.Random(f"answer-look:{args.kind}")
dot, end = tok.token_to_id("."), tok.token_to_id("<|im_end|>")
shares = torch.zeros(n_layers, 4)
right = 0
for _ in range(args.n):
    qn = multi_question(rng, args.images, args.kind, hard=0.5, style=args.layout)
    words, enc, ids = teacher_forced(pipe, qn)
    images = (ids[0] == image_id).nonzero().flatten().tolist()
    listed = ids[0].tolist()
    close = listed.index(dot, images[-1])  # the list's closing "."
    question = list(range(close + 1, listed.index(end, close)))
    ctx = owl3.model.VisualContext.build([m.encode_media(enc.pixel_values)], [enc.media_starts])
    ctx.record_self = dict.fromkeys(range(n_layers))
    with torch.no_grad():
        h = m.language_model.model(m.embed(ids), torch.arange(ids.shape[1])[None], None, None, ctx)
        said = int(m.language_model.lm_head(m.language_model.model.norm(h))[0, -1].argmax())
    right += tok.decode([said]).strip().lower() == words[-1].lower()
    for i in range(n_layers):
        q, k = ctx.record_self[i]
        k = repeat_kv(k, q.shape[1] // k.shape[1])
        w = torch.softmax(torch.einsum("hd,htd->ht", q[0, :, -1], k[0]) / q.shape[-1] ** 0.5, -1).mean(0)
        after = [sum(float(w[t]) for t in range(p + 1, min(p + 5, close + 1))) for p in images]
        x = qn.target - 1
        rest = sum(after) - after[x]
        shares[i] += torch.tensor([after[x], rest, float(w[question].sum()), float(w[images].sum())])
print(f"{args.model} ({args.layout}): {args.kind} among {args.images}, the last word right {right}/{args.n}")
print("layer | on image X's after-tokens | on the other images' | on the question | on the <|image|> tokens")
for i in range(n_layers):
    print(f"{i} | " + " | ".join(f"{v:.3f}" for v in (shares[i] / args.n).tolist()))
