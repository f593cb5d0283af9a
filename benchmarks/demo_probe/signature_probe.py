"""Does the answer know which image "Image X" is? A contrastive probe on the residual stream.

    python benchmarks/demo_probe/signature_probe.py MODEL [N_TRAIN] [N_TEST]

"In Image X" questions among 5 images (colour, shape, size, position; half the distractors show the asked
shape; streams `signature:train` / `signature:test`). For each question, the residual after every decoder
layer is taken at the position that predicts the answer's deciding word, and each image's signature is
the mean of its projected visual tokens (what the hyper layers' keys are made from). The same for the
residual at the token right after image X (where the recency heads bring image X in). A linear map W is
fitted (Adam, full batch, L2 1e-3) so that softmax_i(r^T W f_i) over the question's images picks image X; its
held-out accuracy says whether the residual at that layer identifies image X at all (chance 0.2). If it
does before the last hyper layer, the missing step is using it; if not, routing it there.
"""

import random
import sys

import torch
import torch.nn.functional as F

import owl3
from owl3.demo.questions import multi_question

model_dir = sys.argv[1]
n_train = int(sys.argv[2]) if len(sys.argv) > 2 else 600
n_test = int(sys.argv[3]) if len(sys.argv) > 3 else 200
torch.set_num_threads(1)
torch.manual_seed(0)
pipe = owl3.load(model_dir)
m, tok = pipe.model, pipe.processor.tokenizer
layers = m.language_model.model.layers
KINDS = ("colour", "shape", "size", "position")


@torch.no_grad()
def sample(rng):
    """(residuals after each layer at the deciding position and at the token after image X (n_layers, 2,
    D), image signatures (5, D), X-1)."""
    kind = rng.choice(KINDS)
    qn = multi_question(rng, 5, kind, hard=0.5)
    words = qn.answer.rstrip(".").split(" ")
    cut = 2 if kind == "position" and words[-1] != "center" else 1
    enc = pipe.encode(qn.prompt, qn.render_images(), [], cut=False)
    prefix = tok.encode(" ".join(words[:-cut])).ids
    ids = torch.cat([enc.input_ids, torch.tensor(tok.encode(qn.answer).ids)]).view(1, -1)
    deciding = enc.input_ids.shape[0] + len(prefix) - 1
    feats = m.encode_media(enc.pixel_values)  # (5, T, D)
    after = enc.media_starts[qn.target - 1] + 1  # the token right after image X's <|image|>
    kept = []
    hooks = [
        layer.register_forward_hook(lambda mod, args, out: kept.append(out[0, [deciding, after]]))
        for layer in layers
    ]
    try:
        ctx = owl3.model.VisualContext.build([feats], [enc.media_starts])
        m.language_model.model(m.embed(ids), torch.arange(ids.shape[1])[None], None, None, ctx)
    finally:
        for h in hooks:
            h.remove()
    return torch.stack(kept), feats.mean(1), qn.target - 1


def collect(stream, n):
    rng = random.Random(stream)
    rows = [sample(rng) for _ in range(n)]
    return (torch.stack([r[0] for r in rows]), torch.stack([r[1] for r in rows]),
            torch.tensor([r[2] for r in rows]))  # fmt: skip


def logits(r, w, f):
    """(N, D) residuals, (D, D') map, (N, 5, D') signatures -> (N, 5) scores."""
    return torch.einsum("nd,de,nie->ni", F.layer_norm(r, r.shape[-1:]), w, F.layer_norm(f, f.shape[-1:]))


DECAY = 1e-3
train_r, train_f, train_y = collect("signature:train", n_train)
test_r, test_f, test_y = collect("signature:test", n_test)
d_r, d_f = train_r.shape[-1], train_f.shape[-1]
print(f"{model_dir}: {n_train} / {n_test} questions, 5 images each: image X identified (chance 0.200)")
for pi, where in enumerate(("the deciding position", "the token after image X")):
    for li in range(len(layers)):
        w = torch.zeros(d_r, d_f, requires_grad=True)
        opt = torch.optim.Adam([w], lr=1e-2)
        for _ in range(300):
            opt.zero_grad()
            fit = logits(train_r[:, li, pi], w, train_f)
            (F.cross_entropy(fit, train_y) + DECAY * w.square().sum()).backward()
            opt.step()
        with torch.no_grad():
            acc_train = (logits(train_r[:, li, pi], w, train_f).argmax(-1) == train_y).float().mean()
            acc = (logits(test_r[:, li, pi], w, test_f).argmax(-1) == test_y).float().mean()
        hyper = " (hyper)" if layers[li].self_attn.is_hyper else ""
        print(f"{where}, after layer {li + 1}{hyper}: {acc:.3f} held-out ({acc_train:.3f} train)")
