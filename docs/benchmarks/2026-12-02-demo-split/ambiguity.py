"""How "In Image X" answers among 8 images fare when other images could give another answer: for the
colour and shape questions of `owl3 eval synthetic` records (rebuilt from the evaluation's seeds), whether
another image shows the asked shape in another colour (colour) or the asked colour on another shape
(shape), and how many other answers those give; accuracy per case.

    python ambiguity.py R_SEED2.jsonl 2 R_SEED3.jsonl 3 ...

Then the accuracy of every 8-image question by the position of image X in the list.
"""
import json, random, sys, collections
from owl3.demo.questions import scene_and_qa, SINGLE_KINDS
from owl3.demo.world import random_scene
def scenes_for(seed, n, i):
    kind = SINGLE_KINDS[i % len(SINGLE_KINDS)]
    scene, qa = scene_and_qa(random.Random(f"eval:{seed}:question:{i}"), kind)
    rng = random.Random(f"eval:{seed}:distractors:{n}:{i}")
    x = rng.randint(1, n)
    scenes = [random_scene(rng) for _ in range(n - 1)]
    scenes.insert(x - 1, scene)
    return kind, qa, x, scenes
# colour: "What colour is the star?" ambiguous if another image shows a star of another colour;
# shape: "What shape is the red object?" ambiguous if another image has a red object of another shape
stats = collections.defaultdict(lambda: [0, 0])
for path, seed in zip(sys.argv[1::2], sys.argv[2::2]):
    seed = int(seed)
    for l in open(path):
        r = json.loads(l)
        if r['group'] != '8': continue
        i = int(r['id'].split('-')[1])
        kind, qa, x, scenes = scenes_for(seed, 8, i)
        if kind == 'colour':
            shape = qa.question.split('the ')[1].rstrip('?')
            mine = [o.colour for o in scenes[x-1].objects if o.shape == shape][0]
            others = {o.colour for k, s in enumerate(scenes) if k != x-1 for o in s.objects if o.shape == shape} - {mine}
        elif kind == 'shape':
            colour = qa.question.split('the ')[1].split(' object')[0]
            mine = [o.shape for o in scenes[x-1].objects if o.colour == colour][0]
            others = {o.shape for k, s in enumerate(scenes) if k != x-1 for o in s.objects if o.colour == colour} - {mine}
        else:
            continue
        key = (kind, 'ambiguous' if others else 'unique', len(others))
        stats[key][0] += r['correct']; stats[key][1] += 1
for k in sorted(stats): print(k, stats[k], round(stats[k][0]/stats[k][1], 2))
# every 8-image question, by the position of image X in the list
by_x = collections.defaultdict(lambda: [0, 0])
for path in sys.argv[1::2]:
    for line in open(path):
        r = json.loads(line)
        if r["group"] == "8":
            x = int(r["prompt"].split("In Image ")[1].split(",")[0])
            by_x[x][0] += r["correct"]
            by_x[x][1] += 1
print("image X:", ", ".join(f"{x}: {c}/{t} ({c / t:.2f})" for x, (c, t) in sorted(by_x.items())))
