"""`python -m owl3.demo COMMAND`: build the demo's tokenizer, initial checkpoint and training data."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from owl3.demo import DEFAULT_LENGTH_SPLIT, DEFAULT_RECIPE, DEFAULT_THREADS, RECIPE_NAMES, THREADS_HELP
from owl3.errors import Owl3Error


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m owl3.demo", description=__doc__)
    sub = p.add_subparsers(dest="cmd", required=True, metavar="COMMAND")
    t = sub.add_parser("tokenizer", help="train the world tokenizer into DIR")
    t.add_argument("out", type=Path)
    i = sub.add_parser("init", help="write a random-weight demo checkpoint (with tokenizer) to DIR")
    i.add_argument("out", type=Path)
    i.add_argument("--seed", type=int, default=0)
    i.add_argument("--preset", default="demo")
    d = sub.add_parser("data", help="write a training set (ms-swift JSONL or LLaVA JSON) into DIR")
    d.add_argument("out", type=Path)
    d.add_argument("--rows", type=int, default=10_000)
    d.add_argument("--mix", default="binding", help="perception, binding or long (default binding)")
    d.add_argument("--seed", type=int, default=0)
    d.add_argument("--format", default="swift", choices=("swift", "llava"))
    d.add_argument("--video", default="mp4", choices=("mp4", "images"), help="videos as mp4 or inline frames")
    d.add_argument("--pool", type=int, default=20_000, help="distinct scenes to draw images from")
    d.add_argument("--image-size", type=int, default=84)
    w = sub.add_parser("prepare", help="DIR/init: initial checkpoint; DIR/data: the three curriculum sets")
    w.add_argument("out", type=Path)
    w.add_argument("--rows", default="8000,16000,16000", help="rows of perception,binding,long")
    w.add_argument("--seed", type=int, default=0)
    r = sub.add_parser(
        "train", help="train the demo model from scratch into DIR (DIR/model; 57 min on 2 AVX-512 cores)"
    )
    r.add_argument("out", type=Path)
    r.add_argument("--scale", type=float, default=1.0, help="multiply every phase's steps (0.01: smoke test)")
    r.add_argument("--batch-size", type=int, default=32)
    r.add_argument(
        "--threads",
        type=int,
        default=DEFAULT_THREADS,
        help=THREADS_HELP,
    )
    r.add_argument("--workers", type=int, default=1, help="data loader processes (default 1)")
    r.add_argument(
        "--length-split", type=int, default=DEFAULT_LENGTH_SPLIT, metavar="K",
        help=f"compute each batch as K pieces of similar length: less padding, the same steps "
        f"(default {DEFAULT_LENGTH_SPLIT})",
    )  # fmt: skip
    r.add_argument("--seed", type=int, default=0)
    r.add_argument("--pool", type=int, default=20_000, help="distinct scenes to draw images from")
    r.add_argument(
        "--preset",
        default=None,
        help="model preset (default: the recipe's: demo-cells for the cells recipes, else demo)",
    )
    r.add_argument(
        "--recipe",
        default=DEFAULT_RECIPE,
        choices=RECIPE_NAMES,
        help="phases (see owl3/demo/train.py)",
    )
    r.add_argument("--no-progress", action="store_true")
    v = sub.add_parser(
        "tower", help="pretrain the vision tower of MODEL on the world's scene annotations into OUT"
    )
    v.add_argument("model", type=Path)
    v.add_argument("out", type=Path)
    v.add_argument("--steps", type=int, default=1600)
    v.add_argument("--batch-size", type=int, default=64)
    v.add_argument("--lr", type=float, default=3e-3)
    v.add_argument("--seed", type=int, default=0)
    v.add_argument("--eval-every", type=int, default=100)
    v.add_argument("--heads", default=None, help="comma-separated heads (default: all of HEADS)")
    c = sub.add_parser("check", help="does MODEL use its images? loss with right/rolled/black images")
    c.add_argument("model", type=Path)
    c.add_argument("data", type=Path, help="a training set (one-image rows are used)")
    c.add_argument("-n", type=int, default=16, help="rows (default 16)")
    a = sub.add_parser("ablation", help="hyper vs no-MI-RoPE vs no-gate vs concat, same data and steps")
    a.add_argument("start", type=Path, help="checkpoint all variants start from")
    a.add_argument("out", type=Path)
    a.add_argument("--steps", type=int, default=200)
    a.add_argument("--batch-size", type=int, default=32)
    a.add_argument("--variants", default="hyper,no-mirope,no-gate,concat")
    a.add_argument("--images", default="1,5,8")
    a.add_argument("--limit", type=int, default=40)
    return p


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return _run(args)
    except Owl3Error as e:
        print(f"owl3: error: {e}", file=sys.stderr)
        return 2


def _run(args: argparse.Namespace) -> int:
    from owl3.demo.data import write_dataset
    from owl3.demo.model import init_checkpoint
    from owl3.demo.tokenizer import build_tokenizer

    if args.cmd == "check":
        import json

        from owl3.demo.check import vision_check

        print(json.dumps(vision_check(args.model, args.data, args.n)))
        return 0
    if args.cmd == "tower":
        import json

        from owl3.demo.tower import pretrain_tower

        if args.steps < 1 or args.batch_size < 1:
            raise Owl3Error("--steps and --batch-size must be at least 1")
        from owl3.demo.tower import HEADS

        heads = tuple(args.heads.split(",")) if args.heads else tuple(HEADS)
        res = pretrain_tower(
            args.model, args.out, steps=args.steps, batch_size=args.batch_size, lr=args.lr, seed=args.seed,
            eval_every=max(1, args.eval_every), heads=heads,
        )  # fmt: skip
        print(json.dumps({"model": str(args.out), "steps": res.steps, "seconds": res.seconds, **res.final}))
        return 0
    if args.cmd == "ablation":
        import json

        from owl3.demo.ablation import run_ablation

        res = run_ablation(
            args.start, args.out, args.steps, variants=args.variants.split(","), batch_size=args.batch_size,
            limit=args.limit, images=[int(x) for x in args.images.split(",")],
        )  # fmt: skip
        print(json.dumps(res, indent=2))
        return 0
    if args.cmd == "train":
        from owl3.demo.train import RECIPES, recipe_preset, train_demo

        if args.scale <= 0 or min(args.batch_size, args.threads, args.length_split) < 1 or args.workers < 0:
            raise Owl3Error("--scale must be > 0, --batch-size/--threads/--length-split >= 1, --workers >= 0")
        train_demo(
            args.out, scale=args.scale, batch_size=args.batch_size, threads=args.threads,
            workers=args.workers, length_split=args.length_split, seed=args.seed, pool=args.pool,
            preset=args.preset or recipe_preset(args.recipe), progress=not args.no_progress,
            phases=RECIPES[args.recipe],
        )  # fmt: skip
    elif args.cmd == "tokenizer":
        tok = build_tokenizer(args.out)
        print(f"{args.out}: {tok.get_vocab_size()} tokens")
    elif args.cmd == "init":
        print(init_checkpoint(args.out, seed=args.seed, name=args.preset))
    elif args.cmd == "data":
        print(
            write_dataset(
                args.out,
                args.rows,
                mix=args.mix,
                seed=args.seed,
                fmt=args.format,
                video=args.video,
                pool=args.pool,
                image_size=args.image_size,
            )  # fmt: skip
        )
    else:
        parts = args.rows.split(",")
        if len(parts) != 3 or not all(x.strip().isdigit() for x in parts):
            raise Owl3Error(f"--rows takes three counts (perception,binding,long), got {args.rows!r}")
        rows = [int(x) for x in parts]
        print(init_checkpoint(args.out / "init", seed=args.seed))
        for mix, n in zip(("perception", "binding", "long"), rows, strict=True):
            print(write_dataset(args.out / "data", n, mix=mix, seed=args.seed))
    return 0


if __name__ == "__main__":
    sys.exit(main())
