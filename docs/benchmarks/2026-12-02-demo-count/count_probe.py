"""Where does "How many red objects are there?" lose its count?

    python count_probe.py MODEL [N]

N one-image count questions (count_colour, count_shape, count_all in turn; stream `count-probe:0`),
teacher-forced with their answer. At the two deciding words (the position after "There", which predicts
"is"/"are", and after "There are", which predicts the number): whether the model's argmax is right, and
each hyper layer's cross-attention share (mean over heads) on the counted objects' cells and on the empty
cells. Rows are grouped by the true count."""

import random
import sys
from collections import defaultdict
from pathlib import Path

import torch

from owl3.demo.probe import record_cross_attention
from owl3.demo.questions import IMAGE, ask, empty_cells
from owl3.demo.world import random_scene, render
from owl3.model.text import VisualContext

sys.path.insert(0, str(Path(__file__).resolve().parents[3] / "benchmarks" / "demo_probe"))
from common import load_for_probe  # noqa: E402

model_dir = sys.argv[1]
n_q = int(sys.argv[2]) if len(sys.argv) > 2 else 600
pipe, m, tok, lm = load_for_probe(model_dir)
layers = lm.model.layers
hyper = [i for i, lay in enumerate(layers) if lay.self_attn.is_hyper]
KINDS = ("count_colour", "count_shape", "count_all")
rng = random.Random("count-probe:0")
stats = defaultdict(lambda: defaultdict(list))  # (kind, count) -> name -> values
with torch.no_grad():
    done = 0
    while done < n_q:
        kind = KINDS[done % 3]
        scene = random_scene(rng, word=False)
        qa = ask(scene, kind, rng)
        if qa is None:
            continue
        done += 1
        enc = pipe.encode(f"{IMAGE}\n{qa.question}", [render(scene, 84)], [], cut=False)
        ans = tok.encode(qa.answer, add_special_tokens=False).ids
        ids = torch.cat([enc.input_ids.view(-1), torch.tensor(ans)]).view(1, -1)
        n_prompt = enc.input_ids.numel()
        vctx = VisualContext.build([m.encode_media(enc.pixel_values)], [enc.media_starts])
        with record_cross_attention() as scores:
            h = lm.model(m.embed(ids), torch.arange(ids.shape[1])[None], None, None, vctx)
        logits = lm.lm_head(h[0])
        # positions: n_prompt - 1 predicts "There"; n_prompt predicts is/are; n_prompt + 1 predicts the number
        counted, empty = list(qa.counted), list(empty_cells(scene))
        n = len(counted)
        key = (kind, n)
        for name, pos in (("is/are", n_prompt), ("number", n_prompt + 1)):
            if name == "number" and n == 1:
                continue
            right = int(logits[pos].argmax()) == ids[0, pos + 1]
            stats[key][f"{name} right"].append(float(right))
            for j, i in enumerate(hyper):
                w = torch.softmax(scores[j][0, :, pos].float(), -1)  # (H, 9)
                for part, cells in (("counted", counted), ("empty", empty)):
                    stats[key][f"{name} L{i + 1} {part}"].append(w[:, cells].sum(-1).mean().item())

def mean(vals):
    return f"{sum(vals) / len(vals):.2f}" if vals else "-"


print(f"{model_dir}: {n_q} questions; shares of each hyper layer's cross-attention (mean over heads) at the")
print("position that predicts is/are (A) and the number (B): on the counted objects / the empty cells")
head = ["kind", "count", "n", "is/are right", "number right"]
head += [f"{w} L{i + 1} {p}" for w in "AB" for i in hyper for p in ("counted", "empty")]
print(" | ".join(head))
for key in sorted(stats):
    s = stats[key]
    cells = [key[0], str(key[1]), str(len(s["is/are right"]))]
    cells += [mean(s["is/are right"]), mean(s["number right"])]
    for name in ("is/are", "number"):
        cells += [mean(s[f"{name} L{i + 1} {p}"]) for i in hyper for p in ("counted", "empty")]
    print(" | ".join(cells))
