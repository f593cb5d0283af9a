"""Does telling the answer's cross-attention where to look teach the kinds the plain loss does not?

    python benchmarks/demo_probe/attention_supervision.py MODEL OUT STEPS WEIGHT \
        [KINDS] [OPROJ] [IMAGES] [STYLE] [SELF_WEIGHT SELF_LAYER] [COPY_WEIGHT] [SELF_TOKENS] [AFTER_WEIGHT]

One-image questions of KINDS (default colour,shape,size,position; stream `attn-sup:0`), batches of 32,
AdamW lr 1e-3 (the tower frozen), the answer loss of owl3's training plus WEIGHT x an attention loss: at
the position that predicts the deciding word ("The square is in the | bottom left."), -log of the share of
the last hyper layer's cross-attention (each head) on the asked object's 3x3 cell. WEIGHT 0 is the
control. OPROJ (default 1) multiplies the lr of the hyper layers' o_proj. IMAGES (default 1;
"2-8": uniform from 2 to 8) asks "In Image X, ..." among that many images, half the distractors showing
the asked shape, the target cell being the object's in image X (binding). STYLE: the image list's layout,
`official` (`Image 1: <|image|> ...`, default) or `label_after` (`<|image|> (Image 1) ...`: the tokens
after image X name it). Writes OUT (a checkpoint) for `owl3 eval synthetic --model OUT`; with IMAGES or
STYLE given, it ends by scoring 200 held-out questions of the same kind (stream `attn-sup:eval`): exact
answers (teacher-forced argmax) and the mean attention share on the target cell. SELF_WEIGHT (default 0)
x -log(the share of decoder layer SELF_LAYER's self-attention (1-based, mean over heads) at the deciding
position on the 4 tokens after image X) is added too: the route by which image X's signature, there
since the first hyper layer, could reach the answer (signature_probe.py); its share is reported.
COPY_WEIGHT (default 0) x the cross-entropy of the deciding word read from SELF_LAYER's attention output
alone at the deciding position (final norm + LM head, the logit lens of what that attention adds) is added
too: it asks that attention to carry the answer, not only to look at the tokens after image X.
SELF_TOKENS (default 4): how many tokens after image X the self-attention target (and its share) covers.
AFTER_WEIGHT (default 0) x -log(the last hyper layer's cross-attention share, at the token right after
image X, on the asked object's cell) is added too: that token reads its own image's answer (the after-image
look of question-first prompts, docs/demo.md).
"""

import random
import sys
import time

import torch
import torch.nn.functional as F
from common import load_for_training, target_cell  # this folder (the script's) is on sys.path

import owl3
from owl3.checkpoint import save_model
from owl3.demo.probe import record_cross_attention
from owl3.demo.questions import multi_question
from owl3.training.step import self_log_weights

model_dir, out, steps, weight = sys.argv[1], sys.argv[2], int(sys.argv[3]), float(sys.argv[4])
KINDS = ["colour", "shape", "size", "position"]
kinds = sys.argv[5].split(",") if len(sys.argv) > 5 and sys.argv[5] else KINDS
o_scale = float(sys.argv[6]) if len(sys.argv) > 6 else 1.0
lo, _, hi = (sys.argv[7] if len(sys.argv) > 7 else "1").partition("-")
n_range = (int(lo), int(hi or lo))
style = sys.argv[8] if len(sys.argv) > 8 else "official"
self_weight = float(sys.argv[9]) if len(sys.argv) > 9 else 0.0
self_layer = int(sys.argv[10]) - 1 if len(sys.argv) > 10 else 1
copy_weight = float(sys.argv[11]) if len(sys.argv) > 11 else 0.0
self_tokens = int(sys.argv[12]) if len(sys.argv) > 12 else 4
after_weight = float(sys.argv[13]) if len(sys.argv) > 13 else 0.0
pipe, m, tok, params = load_for_training(model_dir)
grid = m.cfg.vision.image_size // m.cfg.vision.patch_size
last_hyper = max(i for i, layer in enumerate(m.language_model.model.layers) if layer.self_attn.is_hyper)
o_proj = {id(p) for layer in m.language_model.model.layers if layer.self_attn.is_hyper
          for p in layer.self_attn.o_proj.parameters()}  # fmt: skip
groups = [
    {"params": [p for p in params if id(p) not in o_proj], "scale": 1.0},
    {"params": [p for p in params if id(p) in o_proj], "scale": o_scale},
]
opt = torch.optim.AdamW(groups, lr=1e-3, weight_decay=0.0)


added = {}
m.language_model.model.layers[self_layer].self_attn.register_forward_hook(
    lambda mod, inp, out: added.__setitem__("out", out)
)


def forward(qn, kind):
    """(answer loss, attention loss, share on the target, exact, self-attention loss, its share, copy loss,
    after-image look loss)."""
    words = qn.answer.rstrip(".").split(" ")
    cut = 2 if kind == "position" and words[-1] != "center" else 1
    cell = target_cell(qn.images[qn.target - 1], kind, words)
    enc = pipe.encode(qn.prompt, qn.render_images(), [], cut=False)
    prefix = tok.encode(" ".join(words[:-cut])).ids
    answer = tok.encode(qn.answer).ids + [pipe.config.eos_token_id]
    ids = torch.cat([enc.input_ids, torch.tensor(answer)]).view(1, -1)
    n_prompt = enc.input_ids.shape[0]
    with record_cross_attention() as scores:
        ctx = owl3.model.VisualContext.build([m.encode_media(enc.pixel_values)], [enc.media_starts])
        ctx.record_self = {self_layer: None}  # SELF_LAYER's rotated queries and keys
        h = m.language_model.model(m.embed(ids), torch.arange(ids.shape[1])[None], None, None, ctx)
    logits = m.language_model.lm_head(h[0, n_prompt - 1 : -1]).float()
    lm = F.cross_entropy(logits, ids[0, n_prompt:])
    deciding = n_prompt + len(prefix) - 1  # the position whose next token is the deciding word
    offset = (qn.target - 1) * grid * grid  # image X's first visual token
    patches = [
        offset + p for p in range(grid * grid) if (p // grid) * 3 // grid * 3 + (p % grid) * 3 // grid == cell
    ]
    log_w = torch.log_softmax(scores[-1][0, :, deciding], -1)  # (H, M), the last hyper layer
    att = -torch.logsumexp(log_w[:, patches], -1).mean()
    share = float(log_w[:, patches].detach().exp().sum(-1).mean())
    after = enc.media_starts[qn.target - 1] + 1  # the SELF_TOKENS tokens after image X's <|image|>
    self_w = self_log_weights(*ctx.record_self[self_layer], 0, deciding)[:, after : after + self_tokens]
    self_att = -torch.logsumexp(self_w, -1).mean()
    self_share = float(self_w.detach().exp().sum(-1).mean())
    exact = bool((logits.argmax(-1) == ids[0, n_prompt:]).all())
    lens = m.language_model.lm_head(m.language_model.model.norm(added["out"][0, deciding])).float()
    copy = F.cross_entropy(lens[None], ids[0, deciding + 1 : deciding + 2])
    look = -torch.logsumexp(torch.log_softmax(scores[-1][0, :, after], -1)[:, patches], -1).mean()
    return lm, att, share, exact, self_att, self_share, copy, look


def draw(rng):
    kind = rng.choice(kinds)
    n = n_range[0] if n_range[0] == n_range[1] else rng.randint(*n_range)  # IMAGES 1: the rows as before
    return multi_question(rng, n, kind, hard=0.5, style=style), kind


rng = random.Random("attn-sup:0")
t0 = time.time()
for step in range(1, steps + 1):
    for g in opt.param_groups:
        g["lr"] = 1e-3 * g["scale"] * min(1.0, step / 20)
    opt.zero_grad(set_to_none=True)
    lm_total = att_total = self_total = copy_total = look_total = 0.0
    for _ in range(32):
        lm, att, _, _, self_att, _, copy, look = forward(*draw(rng))
        total = lm + weight * att + self_weight * self_att + copy_weight * copy + after_weight * look
        (total / 32).backward()
        look_total += look.item() / 32
        lm_total += lm.item() / 32
        att_total += att.item() / 32
        self_total += self_att.item() / 32
        copy_total += copy.item() / 32
    torch.nn.utils.clip_grad_norm_(params, 1.0)
    opt.step()
    if step % 25 == 0 or step == steps:
        secs = time.time() - t0
        also = f" self-attention {self_total:.3f}" if self_weight else ""
        also += f" copy {copy_total:.3f}" if copy_weight else ""
        also += f" after-image look {look_total:.3f}" if after_weight else ""
        print(f"step {step} lm {lm_total:.4f} attention {att_total:.3f}{also} ({secs:.0f} s)", flush=True)
if len(sys.argv) > 7:
    m.eval()
    held_out = random.Random("attn-sup:eval")
    with torch.no_grad():
        results = [forward(*draw(held_out))[2:] for _ in range(200)]  # (share, exact, -, self share)
    exact = sum(r[1] for r in results) / len(results)
    share = sum(r[0] for r in results) / len(results)
    where = f"{style}, {n_range[0]}-{n_range[1]} images"
    also = ""
    if len(sys.argv) > 9:
        self_share = sum(r[3] for r in results) / len(results)
        also = f", layer {self_layer + 1} self-attention on the {self_tokens} tokens after image X"
        also += f" {self_share:.3f}"
    print(f"held-out ({where}): exact {exact:.3f}, share on target {share:.3f}{also}")
m.eval()
save_model(m, out, copy_from=model_dir)
