"""Does the answer of "Is there a blue square?" follow once its position is told to read the colour word?

    python exists_supervision.py MODEL OUT STEPS WEIGHT [LAYER] [EXISTS_SHARE] [LOOK_WEIGHT]

Fine-tunes MODEL (the tower frozen) on one-image questions (stream `exists-sup:0`; EXISTS_SHARE of them,
default 0.5, "exists", the rest any one-image kind, so nothing is forgotten), batches of 32, AdamW lr 1e-3
with 20 warm-up steps, the answer loss plus WEIGHT x -log(the heads' mean share of decoder layer LAYER's
self-attention, 1-based, default 3, at the position that predicts "Yes"/"No" on the question's colour word):
the exists probe (exists_probe.py) found that position knows the asked shape but not the asked colour
before the last hyper layer looks. WEIGHT 0 is the control. LOOK_WEIGHT (default 0) x -log(the last hyper
layer's cross-attention share, mean over heads, at the same position, on the asked object's cell when
the answer is "Yes" and on the picture's empty cells when it is "No") is added too: where to look when
the pair is there and when it is not (the absence targets of `Mix.absent`). Ends by scoring 400 held-out
exists questions (stream `exists-sup:eval`): first word right, the shares, and writes OUT (a checkpoint)."""

import random
import sys
import time
from pathlib import Path

import torch
import torch.nn.functional as F

import owl3
from owl3.checkpoint import save_model
from owl3.demo.probe import record_cross_attention
from owl3.demo.questions import IMAGE, SINGLE_KINDS, ask
from owl3.demo.world import random_scene, render
from owl3.training.step import self_log_weights

sys.path.insert(0, str(Path(__file__).resolve().parents[3] / "benchmarks" / "demo_probe"))
from common import load_for_training  # noqa: E402

model_dir, out, steps, weight = sys.argv[1], sys.argv[2], int(sys.argv[3]), float(sys.argv[4])
layer = int(sys.argv[5]) - 1 if len(sys.argv) > 5 else 2
exists_share = float(sys.argv[6]) if len(sys.argv) > 6 else 0.5
look_weight = float(sys.argv[7]) if len(sys.argv) > 7 else 0.0
pipe, m, tok, params = load_for_training(model_dir)
GRID = m.cfg.vision.image_size // m.cfg.vision.patch_size
opt = torch.optim.AdamW(params, lr=1e-3, weight_decay=0.0)


def forward(scene, qa):
    """(answer loss, self-attention loss, share, first word right, cross-attention loss, its share)."""
    enc = pipe.encode(f"{IMAGE}\n{qa.question}", [render(scene, 84)], [], cut=False)
    answer = tok.encode(qa.answer).ids + [pipe.config.eos_token_id]
    ids = torch.cat([enc.input_ids, torch.tensor(answer)]).view(1, -1)
    n_prompt = enc.input_ids.shape[0]
    with record_cross_attention() as scores:
        ctx = owl3.model.VisualContext.build([m.encode_media(enc.pixel_values)], [enc.media_starts])
        ctx.record_self = {layer: None}
        h = m.language_model.model(m.embed(ids), torch.arange(ids.shape[1])[None], None, None, ctx)
    logits = m.language_model.lm_head(h[0, n_prompt - 1 : -1]).float()
    lm = F.cross_entropy(logits, ids[0, n_prompt:])
    first = bool(logits[0].argmax() == ids[0, n_prompt])
    if qa.kind != "exists":
        return lm, lm.new_zeros(()), 0.0, first, lm.new_zeros(()), 0.0
    # the question's colour word: "Is there a blue square?" -> " blue", 3 tokens before the "?"
    colour = tok.encode(" " + qa.question.rstrip("?").split(" ")[-2]).ids
    assert len(colour) == 1
    at = max(i for i in range(n_prompt) if int(ids[0, i]) == colour[0])
    log_w = self_log_weights(*ctx.record_self[layer], 0, n_prompt - 1)[:, at]  # (H,)
    look = -(torch.logsumexp(log_w, 0) - torch.log(torch.tensor(float(log_w.shape[0]))))
    cells = (qa.cell,) if qa.answer.startswith("Yes") else qa.empty
    if cells == (None,) or not cells:  # two matching objects, or no empty cell: no look target
        cross, cross_share = lm.new_zeros(()), float("nan")
    else:
        patches = [
            p for p in range(GRID * GRID) if (p // GRID) * 3 // GRID * 3 + (p % GRID) * 3 // GRID in cells
        ]
        log_c = torch.log_softmax(scores[-1][0, :, n_prompt - 1].float(), -1)[:, patches]  # (H, cells)
        cross = -torch.logsumexp(log_c, -1).mean()
        cross_share = float(log_c.detach().exp().sum(-1).mean())
    return lm, look, float(log_w.detach().exp().mean()), first, cross, cross_share


def draw(rng):
    while True:
        kind = "exists" if rng.random() < exists_share else rng.choice(SINGLE_KINDS)
        scene = random_scene(rng)
        qa = ask(scene, kind, rng)
        if qa is not None:
            return scene, qa


def held_out(n=400):
    rng = random.Random("exists-sup:eval")
    rows = []
    while len(rows) < n:
        scene = random_scene(rng, word=False)
        qa = ask(scene, "exists", rng)
        if qa is not None:
            rows.append((scene, qa))
    m.eval()
    with torch.no_grad():
        res = [forward(*r) for r in rows]
    m.train()
    right = sum(r[3] for r in res) / n
    share = sum(r[2] for r in res) / n
    yes = [r[5] for r, (_, qa) in zip(res, rows, strict=True) if qa.answer.startswith("Yes") and r[5] == r[5]]
    no = [r[5] for r, (_, qa) in zip(res, rows, strict=True) if qa.answer.startswith("No") and r[5] == r[5]]
    return (
        f"exists first word right {right:.3f}, layer {layer + 1} share on the colour word {share:.3f}, "
        f"last hyper layer's share on the object (yes) {sum(yes) / len(yes):.3f}, "
        f"on the empty cells (no) {sum(no) / len(no):.3f}"
    )


print(f"{model_dir} before: {held_out()}", flush=True)
rng = random.Random("exists-sup:0")
t0 = time.time()
for step in range(1, steps + 1):
    for g in opt.param_groups:
        g["lr"] = 1e-3 * min(1.0, step / 20)
    opt.zero_grad(set_to_none=True)
    lm_total = look_total = 0.0
    for _ in range(32):
        lm, look, _, _, cross, _ = forward(*draw(rng))
        ((lm + weight * look + look_weight * cross) / 32).backward()
        lm_total += lm.item() / 32
        look_total += look.item() / 32
    torch.nn.utils.clip_grad_norm_(params, 1.0)
    opt.step()
    if step % 25 == 0 or step == steps:
        print(f"step {step} lm {lm_total:.4f} look {look_total:.3f} ({time.time() - t0:.0f} s)", flush=True)
    if step % 100 == 0 or step == steps:
        print(f"after {step}: {held_out()}", flush=True)
m.eval()
save_model(m, out, copy_from=model_dir)
