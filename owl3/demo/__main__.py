"""`python -m owl3.demo COMMAND`: build the demo's tokenizer, initial checkpoint and training data."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from owl3.errors import Owl3Error


def main(argv: list[str] | None = None) -> int:
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
    args = p.parse_args(argv)
    try:
        return _run(args)
    except Owl3Error as e:
        print(f"owl3: error: {e}", file=sys.stderr)
        return 2


def _run(args: argparse.Namespace) -> int:
    from owl3.demo.data import write_dataset
    from owl3.demo.model import init_checkpoint
    from owl3.demo.tokenizer import build_tokenizer

    if args.cmd == "tokenizer":
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
