"""Does telling the answer's cross-attention where to look teach the kinds the plain loss does not?

    python benchmarks/demo_probe/attention_supervision.py MODEL OUT STEPS WEIGHT [KINDS] [OPROJ_LR_SCALE]

One-image questions of KINDS (default colour,shape,size,position; stream `attn-sup:0`), batches of 32,
AdamW lr 1e-3 (the tower frozen), the answer loss of owl3's training plus WEIGHT x an attention loss: at
the position that predicts the deciding word ("The square is in the | bottom left."), -log of the share of
the last hyper layer's cross-attention (each head) on the asked object's 3x3 cell. WEIGHT 0 is the
control. OPROJ_LR_SCALE (default 1) multiplies the lr of the hyper layers' o_proj. Writes OUT (a
checkpoint) for `owl3 eval synthetic --model OUT`.
"""

import random
import sys
import time

import torch
import torch.nn.functional as F

import owl3
from owl3.checkpoint import save_model
from owl3.demo.probe import record_cross_attention
from owl3.demo.questions import single_question
from owl3.demo.world import CELL_NAMES, COLOURS

model_dir, out, steps, weight = sys.argv[1], sys.argv[2], int(sys.argv[3]), float(sys.argv[4])
KINDS = ["colour", "shape", "size", "position"]
kinds = sys.argv[5].split(",") if len(sys.argv) > 5 and sys.argv[5] else KINDS
o_scale = float(sys.argv[6]) if len(sys.argv) > 6 else 1.0
torch.set_num_threads(1)
torch.manual_seed(0)
pipe = owl3.load(model_dir)
m, tok = pipe.model, pipe.processor.tokenizer
m.train().requires_grad_(True)
m.vision_model.requires_grad_(False)
grid = m.cfg.vision.image_size // m.cfg.vision.patch_size
last_hyper = max(i for i, layer in enumerate(m.language_model.model.layers) if layer.self_attn.is_hyper)
params = [p for p in m.parameters() if p.requires_grad]
o_proj = {id(p) for layer in m.language_model.model.layers if layer.self_attn.is_hyper
          for p in layer.self_attn.o_proj.parameters()}  # fmt: skip
groups = [
    {"params": [p for p in params if id(p) not in o_proj], "scale": 1.0},
    {"params": [p for p in params if id(p) in o_proj], "scale": o_scale},
]
opt = torch.optim.AdamW(groups, lr=1e-3, weight_decay=0.0)


def target_cell(scene, kind, words):
    if kind == "position":
        name = "center" if words[-1] == "center" else " ".join(words[-2:])
        return next(o for o in scene.objects if CELL_NAMES[o.cell] == name).cell
    if kind == "shape":
        return next(o for o in scene.objects if o.colour == words[1]).cell
    said = set(words[:-1])
    colour = next((c for c in COLOURS if c in said), None)
    return next(o for o in scene.objects if o.shape in said and colour in (None, o.colour)).cell


rng = random.Random("attn-sup:0")
t0 = time.time()
for step in range(1, steps + 1):
    for g in opt.param_groups:
        g["lr"] = 1e-3 * g["scale"] * min(1.0, step / 20)
    opt.zero_grad(set_to_none=True)
    lm_total = att_total = 0.0
    for _ in range(32):
        kind = rng.choice(kinds)
        qn = single_question(rng, kind)
        words = qn.answer.rstrip(".").split(" ")
        cut = 2 if kind == "position" and words[-1] != "center" else 1
        cell = target_cell(qn.images[0], kind, words)
        enc = pipe.encode(qn.prompt, qn.render_images(), [], cut=False)
        prefix = tok.encode(" ".join(words[:-cut])).ids
        answer = tok.encode(qn.answer).ids + [pipe.config.eos_token_id]
        ids = torch.cat([enc.input_ids, torch.tensor(answer)]).view(1, -1)
        n_prompt = enc.input_ids.shape[0]
        with record_cross_attention() as scores:
            ctx = owl3.model.VisualContext.build([m.encode_media(enc.pixel_values)], [enc.media_starts])
            h = m.language_model.model(m.embed(ids), torch.arange(ids.shape[1])[None], None, None, ctx)
        logits = m.language_model.lm_head(h[0, n_prompt - 1 : -1]).float()
        lm = F.cross_entropy(logits, ids[0, n_prompt:])
        deciding = n_prompt + len(prefix) - 1  # the position whose next token is the deciding word
        patches = [
            p for p in range(grid * grid) if (p // grid) * 3 // grid * 3 + (p % grid) * 3 // grid == cell
        ]
        log_w = torch.log_softmax(scores[-1][0, :, deciding], -1)  # (H, M), the last hyper layer
        att = -torch.logsumexp(log_w[:, patches], -1).mean()
        ((lm + weight * att) / 32).backward()
        lm_total += lm.item() / 32
        att_total += att.item() / 32
    torch.nn.utils.clip_grad_norm_(params, 1.0)
    opt.step()
    if step % 25 == 0 or step == steps:
        secs = time.time() - t0
        print(f"step {step} lm {lm_total:.4f} attention {att_total:.3f} ({secs:.0f} s)", flush=True)
m.eval()
save_model(m, out, copy_from=model_dir)
