"""Retrieval recall and attention-share accuracy of the built-in demo model (docs/rag.md).

    .venv/bin/python benchmarks/rag_eval.py [--items 64] [--queries 2] [--questions 100] [--seed 0]
    .venv/bin/python benchmarks/rag_eval.py --write-items DIR     # the items only, for 'owl3 kb build DIR'

1. Retrieval: a knowledge base (built through `owl3.kb`, LanceDB in a temporary folder) of `--items`
   pictures, each one object of a distinct shape and colour (sizes drawn at random) in a random cell,
   with its text "a big red star". Each query redraws an item's object (same shape, colour and size) in
   another cell with a new jitter; recall@1 and @5 of the item among the image-query hits.
2. Shares: `owl3 eval synthetic`'s 8-image questions (`Image 1: <|image|> ... Image 8: <|image|>.
   In Image X, ...`, seed `--seed`); for each, the answer's attention share and gradient share
   (`attribution="attention"` and `"gradient"`) and whether the image with the largest share is X,
   counted apart for right and wrong answers.

Prints two tables and a last line of JSON.
"""

from __future__ import annotations

import argparse
import itertools
import json
import random
import tempfile
import time
from pathlib import Path

import torch

import owl3
from owl3.demo.synthetic import SyntheticTask
from owl3.demo.world import COLOURS, SHAPES, SIZES, Scene, random_object, render
from owl3.kb.embed import embed_images, weights_hash
from owl3.kb.items import Item
from owl3.kb.store import KnowledgeBase
from owl3.processing import global_view

POOLS = ("deviation", "mean", "max")  # owl3's pool (owl3/kb/embed.py), and two plain ones to compare


def embedder(model, pool: str):
    """Images -> unit vectors with owl3's pool, or with a plain mean / max over the visual tokens."""
    if pool == "deviation":
        return lambda imgs: embed_images(model, imgs)

    def embed(imgs):
        px = torch.stack([global_view(i, model.cfg.image_size) for i in imgs])
        with torch.inference_mode():
            f = model.encode_media(px, None).float()  # (N, T, D)
            v = f.mean(1) if pool == "mean" else f.amax(1)
        return torch.nn.functional.normalize(v, dim=-1).numpy()

    return embed


def write_items(folder: Path, n_items: int, rng: random.Random) -> tuple[list[Item], list]:
    """`n_items` pictures of one object each (distinct shape and colour) with their .txt, in `folder`."""
    kinds = list(itertools.product(SHAPES, COLOURS))
    rng.shuffle(kinds)
    if n_items > len(kinds):
        raise SystemExit(f"--items is at most {len(kinds)} (one per shape and colour)")
    folder.mkdir(parents=True, exist_ok=True)
    items, objects = [], []
    for i, (shape, colour) in enumerate(kinds[:n_items]):
        obj = random_object(rng, rng.randrange(9), shape=shape, colour=colour, size=rng.choice(SIZES))
        path = folder / f"item{i:03d}.png"
        render(Scene((obj,))).save(path)
        text = f"a {obj.size} {colour} {shape}"
        path.with_suffix(".txt").write_text(text + "\n")
        items.append(Item(f"item{i:03d}", path, text))
        objects.append(obj)
    return items, objects


def retrieval(
    pipe, n_items: int, n_queries: int, seed: int, show_misses: bool = False, pool: str = "deviation"
) -> dict:
    rng = random.Random(f"rag:{seed}")
    model = pipe.model
    with tempfile.TemporaryDirectory() as tmp:
        items, objects = write_items(Path(tmp) / "items", n_items, rng)
        kb = KnowledgeBase.create(
            Path(tmp) / "kb", "built-in demo", weights_hash(model), model.cfg.text.dim, model.cfg.image_size
        )
        t0 = time.perf_counter()
        embed = embedder(model, pool)
        kb.add(items, embed)
        build_s = time.perf_counter() - t0
        queries, truth = [], []
        for i, obj in enumerate(objects):
            for _ in range(n_queries):
                cell = rng.choice([c for c in range(9) if c != obj.cell])
                moved = random_object(rng, cell, shape=obj.shape, colour=obj.colour, size=obj.size)
                queries.append(render(Scene((moved,))))
                truth.append(items[i].id)
        vectors = embed(queries)
        ranks = []
        texts = {it.id: it.text for it in items}
        for v, want in zip(vectors, truth, strict=True):
            hits = kb.search(vector=v, top_k=5)
            ids = [h.id for h in hits]
            ranks.append(ids.index(want) + 1 if want in ids else None)
            if show_misses and ids[0] != want:
                print(f"  miss: {texts[want]!r} found {hits[0].text!r} first")
    n = len(ranks)
    return {
        "pool": pool,
        "items": n_items,
        "queries": n,
        "recall@1": sum(r == 1 for r in ranks) / n,
        "recall@5": sum(r is not None for r in ranks) / n,
        "build_s": round(build_s, 2),
    }


def attention(pipe, n_questions: int, seed: int, measure: str = "attention") -> dict:
    task = SyntheticTask(seed=seed, images=[8], limit=n_questions, frames=0, which_images=0)
    counts = {True: [0, 0], False: [0, 0]}  # answer right? -> [largest share on X, questions]
    layer_hits: dict[int, int] = {}  # the same within each hyper layer alone (Share.by_layer)
    questions = [(item, item.media()[0]) for item in task.items(pipe.config.image_size)]
    start = time.perf_counter()
    for item, images in questions:  # the same answers without any share: the baseline of the timing
        pipe.generate(item.prompt, images, cut=False, max_new_tokens=24)
    alone = time.perf_counter() - start
    start = time.perf_counter()
    answers = [
        pipe.generate(item.prompt, images, attribution=measure, cut=False, max_new_tokens=24)
        for item, images in questions
    ]
    seconds = time.perf_counter() - start
    for (item, _), out in zip(questions, answers, strict=True):
        top = max(range(len(out.shares)), key=lambda i: out.shares[i].share) + 1
        right = task.score(out.text, item)
        counts[right][0] += top == item.meta["target"]
        counts[right][1] += 1
        for layer in out.shares[0].by_layer:
            best = max(range(len(out.shares)), key=lambda i: out.shares[i].by_layer[layer]) + 1
            layer_hits[layer] = layer_hits.get(layer, 0) + (best == item.meta["target"])
    hit = counts[True][0] + counts[False][0]
    return {
        "seconds": round(seconds, 2),
        "seconds_without_shares": round(alone, 2),
        "by_layer": {layer: n / n_questions for layer, n in layer_hits.items()},
        "questions": n_questions,
        "top_share_is_X": hit / n_questions,
        "right_answers": counts[True][1],
        "top_share_is_X_when_right": counts[True][0] / max(1, counts[True][1]),
        "wrong_answers": counts[False][1],
        "top_share_is_X_when_wrong": counts[False][0] / max(1, counts[False][1]),
    }


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--items", type=int, default=64)
    p.add_argument("--queries", type=int, default=2, help="queries per item")
    p.add_argument("--questions", type=int, default=100, help="8-image questions (0: retrieval only)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--pool", choices=POOLS, default="deviation", help="image pooling (a comparison)")
    p.add_argument(
        "--show-misses", action="store_true", help="print each image query whose item is not first"
    )
    p.add_argument(
        "--write-items",
        metavar="DIR",
        default=None,
        help="only write the items (PNG + .txt) to DIR, for trying 'owl3 kb build DIR', and stop",
    )
    args = p.parse_args()
    if args.write_items:
        write_items(Path(args.write_items), args.items, random.Random(f"rag:{args.seed}"))
        print(f"wrote {args.items} items to {args.write_items}")
        return
    pipe = owl3.load()
    r = retrieval(pipe, args.items, args.queries, args.seed, args.show_misses, args.pool)
    print(f"retrieval: {r['items']} items, {r['queries']} image queries (object redrawn in another cell)")
    print(
        f"  recall@1 {100 * r['recall@1']:.1f}%   recall@5 {100 * r['recall@5']:.1f}%   "
        f"(target recall@1 >= 90%)"
    )
    if args.questions < 1:  # retrieval only
        print(json.dumps({"retrieval": r, "seed": args.seed}))
        return
    shares = {}
    for measure in ("attention", "gradient"):
        a = shares[measure] = attention(pipe, args.questions, args.seed, measure)
        n, seed = a["questions"], args.seed
        print(f"{measure} share: {n} questions with 8 images (owl3 eval synthetic, seed {seed})")
        print(f"  {'answers':<8} {'n':>4}  largest share on the asked Image X")
        print(f"  {'all':<8} {a['questions']:>4}  {100 * a['top_share_is_X']:.1f}%   (target >= 80%)")
        print(f"  {'right':<8} {a['right_answers']:>4}  {100 * a['top_share_is_X_when_right']:.1f}%")
        print(f"  {'wrong':<8} {a['wrong_answers']:>4}  {100 * a['top_share_is_X_when_wrong']:.1f}%")
        for layer, rate in a["by_layer"].items():
            print(f"  hyper layer {layer} (0-based) alone: largest share on X {100 * rate:.1f}%")
        with_s, without = a["seconds"], a["seconds_without_shares"]
        print(f"  time: {with_s:.1f} s with the shares, {without:.1f} s without ({with_s / without:.2f}x)")
    print(json.dumps({"retrieval": r, **shares, "seed": args.seed}))


if __name__ == "__main__":
    main()
