"""Where does "Is there a blue square?" lose its answer?

    python exists_probe.py MODEL [N] [N_BACK]

N one-image exists questions (1-4 objects, half of them present, the absent ones near misses as in
training; stream `exists-probe:0`), teacher-forced up to the position that predicts "Yes"/"No". At that
position, after every decoder layer: the logit lens (final norm + LM head, Yes against No) and a logistic
read-out of the truth (fitted on 80%, scored on the rest) from the residual, from the layer's attention
output and, in the hyper layers, from the cross-attention output before the gate (all heads) and the gate's
mean. Then the same at the colour and the shape word of the question (does the question token know what
is asked?), and what the model says. With N_BACK, the asked colour and shape read out of the residual
after each layer at each of the last N_BACK prompt tokens (8: from the colour word on)."""

import random
import sys
from pathlib import Path

import torch

import owl3.model.text as text
from owl3.demo.questions import IMAGE, ask
from owl3.demo.world import COLOURS, SHAPES, random_scene, render

sys.path.insert(0, str(Path(__file__).resolve().parents[3] / "benchmarks" / "demo_probe"))
from common import held_out_readout, load_for_probe  # noqa: E402

model_dir = sys.argv[1]
n_q = int(sys.argv[2]) if len(sys.argv) > 2 else 800
pipe, m, tok, lm = load_for_probe(model_dir)
layers = lm.model.layers
yes_no = [tok.encode(w).ids[0] for w in ("Yes", "No")]
resid, attn, cross, gates = {}, {}, {}, {}
for i, lay in enumerate(layers):
    lay.register_forward_hook(lambda mod, inp, out, i=i: resid.__setitem__(i, out))
    lay.self_attn.register_forward_hook(lambda mod, inp, out, i=i: attn.__setitem__(i, out))
    if lay.self_attn.is_hyper:
        lay.self_attn.gate_proj.register_forward_hook(lambda mod, inp, out, i=i: gates.__setitem__(i, out))
calls = []
plain = text.cross_attention


def recording(q, k, v, ctx, positions):
    out, seen = plain(q, k, v, ctx, positions)
    calls.append(out)
    return out, seen


text.cross_attention = recording
n_back = int(sys.argv[3]) if len(sys.argv) > 3 else 0
rng = random.Random("exists-probe:0")
R, A, C, G, ys = [[] for _ in layers], [[] for _ in layers], {}, {}, []
asked = []  # (colour, shape) of each question
states, names = [], None  # the last n_back tokens' residuals after each layer, and those tokens
said = right = 0
with torch.no_grad():
    while len(ys) < n_q:
        scene = random_scene(rng, word=False)
        qa = ask(scene, "exists", rng)
        if qa is None:
            continue
        enc = pipe.encode(f"{IMAGE}\n{qa.question}", [render(scene, 84)], [], cut=False)
        ids = enc.input_ids.view(1, -1)
        ctx = text.VisualContext.build([m.encode_media(enc.pixel_values)], [enc.media_starts])
        calls.clear()
        h = lm.model(m.embed(ids), torch.arange(ids.shape[1])[None], None, None, ctx)
        truth = int(qa.answer.startswith("No"))
        pred = int(lm.lm_head(h[0, -1])[yes_no].argmax())
        said += pred
        right += pred == truth
        hyper = [i for i in range(len(layers)) if layers[i].self_attn.is_hyper]
        for i in range(len(layers)):
            R[i].append(resid[i][0, -1].float())
            A[i].append(attn[i][0, -1].float())
        for j, i in enumerate(hyper):
            C.setdefault(i, []).append(calls[j][0, :, -1].reshape(-1).float())
            G.setdefault(i, []).append(gates[i][0, :, -1].mean().item())
        ys.append(truth)
        words = qa.question.rstrip("?").split(" ")
        asked.append((list(COLOURS).index(words[-2]), list(SHAPES).index(words[-1])))
        if n_back:
            states.append([resid[i][0, -n_back:].float() for i in range(len(layers))])
            names = [tok.decode([t]) for t in ids[0, -n_back:].tolist()]
y = torch.tensor(ys)
print(
    f"{model_dir}: {len(y)} exists questions, {float(y.float().mean()):.3f} of them 'No'; "
    f"the model says No {said / len(y):.3f}, right {right / len(y):.3f}"
)
print("layer | logit lens | read-out of the residual | of the attention output | of the cross output | gate")
with torch.no_grad():
    for i in range(len(layers)):
        lens = (lm.lm_head(lm.model.norm(torch.stack(R[i])))[:, yes_no].argmax(-1) == y).float().mean()
        extra = " | - | -"
        if i in C:
            extra = f" | {held_out_readout(C[i], y, 2):.3f} | {sum(G[i]) / len(G[i]):.3f}"
        hyper = " (hyper)" if layers[i].self_attn.is_hyper else ""
        print(
            f"{i + 1}{hyper} | {lens:.3f} | {held_out_readout(R[i], y, 2):.3f} | "
            f"{held_out_readout(A[i], y, 2):.3f}{extra}",
            flush=True,
        )
colour_y = torch.tensor([c for c, _ in asked])
shape_y = torch.tensor([s for _, s in asked])
print("does the deciding position know what is asked? read-out of the residual after each layer")
print("layer | asked colour | asked shape")
for i in range(len(layers)):
    print(
        f"{i + 1} | {held_out_readout(R[i], colour_y, len(COLOURS)):.3f} | "
        f"{held_out_readout(R[i], shape_y, len(SHAPES)):.3f}",
        flush=True,
    )


# the same questions at the tokens from the colour word to the deciding position (the template between
# them is the same in every row): where along the way the asked colour is dropped
if n_back:
    print(
        "asked colour / asked shape read out of the residual after each layer, at each token from the "
        "colour word to the deciding position"
    )
    print("token | " + " | ".join(f"layer {i + 1}" for i in range(len(layers))))
    for t in range(n_back):
        cells = [
            f"{held_out_readout([s[i][t] for s in states], colour_y, len(COLOURS)):.2f} / "
            f"{held_out_readout([s[i][t] for s in states], shape_y, len(SHAPES)):.2f}"
            for i in range(len(layers))
        ]
        print(f"{names[t]!r} | " + " | ".join(cells), flush=True)
