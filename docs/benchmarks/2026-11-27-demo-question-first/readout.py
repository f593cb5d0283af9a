"""Can the asked colour be read (linearly) from the token right after image X, after each decoder layer?

    python readout.py MODEL LAYOUT [N]

N question-first "In Image X, what colour is the <shape>?" questions among 2-8 images (half the distractors
showing the shape); the residual stream at the token right after image X after every decoder layer; a
logistic read-out of the answer's colour fitted on 80% and scored on the rest (chance: the commonest colour)."""
import random, sys
from pathlib import Path
import torch
import owl3
from owl3.demo.questions import multi_question

sys.path.insert(0, str(Path(__file__).resolve().parents[3] / "benchmarks" / "demo_probe"))
from common import held_out_readout  # noqa: E402

model_dir, style = sys.argv[1], sys.argv[2]
n_q = int(sys.argv[3]) if len(sys.argv) > 3 else 1500
torch.set_num_threads(2)
torch.manual_seed(0)
pipe = owl3.load(model_dir)
m = pipe.model.eval()
layers = m.language_model.model.layers
rng = random.Random("readout:0")
feats, ys = [[] for _ in layers], []
captured = {}
hooks = [lay.register_forward_hook(lambda mod, inp, out, i=i: captured.__setitem__(i, out[0] if isinstance(out, tuple) else out))
         for i, lay in enumerate(layers)]
with torch.no_grad():
    for _ in range(n_q):
        qn = multi_question(rng, rng.randint(2, 8), "colour", hard=0.5, style=style)
        colour = qn.answer.rstrip(".").split(" ")[-1]
        enc = pipe.encode(qn.prompt, qn.render_images(), [], cut=False)
        ids = enc.input_ids.view(1, -1)
        ctx = owl3.model.VisualContext.build([m.encode_media(enc.pixel_values)], [enc.media_starts])
        m.language_model.model(m.embed(ids), torch.arange(ids.shape[1])[None], None, None, ctx)
        t = enc.media_starts[qn.target - 1] + 1
        for i in range(len(layers)):
            feats[i].append(captured[i][0, t].float())
        ys.append(colour)
names = sorted(set(ys))
y = torch.tensor([names.index(c) for c in ys])
cut = int(0.8 * len(y))
chance = max((y[cut:] == k).float().mean().item() for k in range(len(names)))
print(f"{model_dir} ({style}): {len(y)} questions, {len(names)} colours, chance {chance:.3f}")
for i in range(len(layers)):
    acc = held_out_readout(feats[i], y, len(names))
    print(f"after layer {i + 1}{' (hyper)' if layers[i].self_attn.is_hyper else ''}: held-out accuracy {acc:.3f}")
