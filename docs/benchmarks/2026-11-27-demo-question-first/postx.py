"""Where do the tokens right after image X look (second hyper layer), with the question before the images?"""
import random, sys
import torch
import owl3
from owl3.demo.probe import record_cross_attention
from owl3.demo.questions import multi_question
from pathlib import Path
sys.path.insert(0, str(Path(__file__).resolve().parents[3] / "benchmarks" / "demo_probe"))
from common import target_cell  # noqa: E402

model_dir, style = sys.argv[1], sys.argv[2]
n_q = int(sys.argv[3]) if len(sys.argv) > 3 else 150
torch.set_num_threads(1)
pipe = owl3.load(model_dir)
m = pipe.model.eval()
grid = m.cfg.vision.image_size // m.cfg.vision.patch_size

rng = random.Random("attn-sup:eval")
tot = {}
def add(k, v):
    tot.setdefault(k, []).append(v)
with torch.no_grad():
    for _ in range(n_q):
        kind = rng.choice(["colour", "shape", "size", "position"])
        n = rng.randint(2, 8)
        qn = multi_question(rng, n, kind, hard=0.5, style=style)
        words = qn.answer.rstrip(".").split(" ")
        cell = target_cell(qn.images[qn.target - 1], kind, words)
        enc = pipe.encode(qn.prompt, qn.render_images(), [], cut=False)
        ids = enc.input_ids.view(1, -1)
        with record_cross_attention() as scores:
            ctx = owl3.model.VisualContext.build([m.encode_media(enc.pixel_values)], [enc.media_starts])
            m.language_model.model(m.embed(ids), torch.arange(ids.shape[1])[None], None, None, ctx)
        x = qn.target - 1
        off = x * grid * grid
        patches = [off + p for p in range(grid * grid) if (p // grid) * 3 // grid * 3 + (p % grid) * 3 // grid == cell]
        for li, sc in enumerate(scores):
            w = torch.softmax(sc[0].float(), -1).nan_to_num(0.0)  # (H, L, M)
            t = enc.media_starts[x] + 1
            add(f"L{li} post-X on image X", float(w[:, t, off:off + grid * grid].sum(-1).mean()))
            add(f"L{li} post-X on X's object", float(w[:, t, patches].sum(-1).mean()))
            add(f"L{li} post-X on X's object (best head)", float(w[:, t, patches].sum(-1).max()))
            add(f"L{li} last prompt tok on X's object", float(w[:, -1, patches].sum(-1).mean()))
for k, v in tot.items():
    print(f"{k}: {sum(v)/len(v):.3f}")
