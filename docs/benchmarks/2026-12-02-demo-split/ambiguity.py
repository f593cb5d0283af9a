"""How "In Image X" answers among 8 images fare when other images could give another answer: for the
colour and shape questions of `owl3 eval synthetic` records (their scenes rebuilt by
`SyntheticTask.distractor_question`), whether another image shows the asked shape in another colour
(colour) or the asked colour on another shape (shape), and how many other answers those give; accuracy
per case. Then the accuracy of every 8-image question by the position of image X in the list.

    python ambiguity.py R_SEED2.jsonl 2 R_SEED3.jsonl 3 ...
"""
import collections
import json
import sys

from owl3.evaluation.synthetic import SyntheticTask


def other_answers(kind: str, question: str, x: int, scenes) -> set[str] | None:
    """The answers other images of the list would give to a colour / shape question (None: another kind)."""
    if kind == "colour":
        shape = question.split("the ")[1].rstrip("?")
        mine = [o.colour for o in scenes[x - 1].objects if o.shape == shape][0]
        seen = {o.colour for k, s in enumerate(scenes) if k != x - 1 for o in s.objects if o.shape == shape}
        return seen - {mine}
    if kind == "shape":
        colour = question.split("the ")[1].split(" object")[0]
        mine = [o.shape for o in scenes[x - 1].objects if o.colour == colour][0]
        seen = {o.shape for k, s in enumerate(scenes) if k != x - 1 for o in s.objects if o.colour == colour}
        return seen - {mine}
    return None


stats = collections.defaultdict(lambda: [0, 0])
by_x = collections.defaultdict(lambda: [0, 0])
for path, seed in zip(sys.argv[1::2], sys.argv[2::2], strict=True):
    for line in open(path):
        r = json.loads(line)
        if r["group"] != "8":
            continue
        kind, qa, x, scenes = SyntheticTask(seed=int(seed)).distractor_question(8, int(r["id"].split("-")[1]))
        by_x[x][0] += r["correct"]
        by_x[x][1] += 1
        others = other_answers(kind, qa.question, x, scenes)
        if others is not None:
            key = (kind, "ambiguous" if others else "unique", len(others))
            stats[key][0] += r["correct"]
            stats[key][1] += 1
for key in sorted(stats):
    print(key, stats[key], round(stats[key][0] / stats[key][1], 2))
print("image X:", ", ".join(f"{x}: {c}/{t} ({c / t:.2f})" for x, (c, t) in sorted(by_x.items())))
