"""`owl3 kb build | add | search | info`: knowledge bases on disk for retrieval-augmented answers.

`build ITEMS --output KB` embeds a folder or a JSONL of items with a model's own vision path and stores
them with LanceDB; `add KB ITEMS` adds or replaces items; `search KB (--image Q | --text "...")` prints
the best items; `info KB` describes one. Answers from a knowledge base: `owl3 generate --kb KB`.
"""

from __future__ import annotations

import argparse
import json
import shutil
import sys

from owl3.errors import Owl3Error


def _load_model(name: str | None, dtype: str, device: str):
    """The model of `name` (a checkpoint folder; None: the built-in model) and how the KB records it."""
    from pathlib import Path

    from owl3.checkpoint import load_model

    folder = Path(name) if name else Path(__file__).resolve().parents[1] / "assets" / "demo"
    return load_model(folder, dtype=dtype, device=device), (
        str(folder.resolve()) if name else "built-in demo"
    )


def _model_of_kb(args: argparse.Namespace, kb):
    """--model if given, else the model the knowledge base records (the built-in one if it says so)."""
    name = args.model
    if name is None and kb.meta["model"] != "built-in demo":
        name = kb.meta["model"]
    return _load_model(name, args.dtype, args.device)


def _embedder(model, batch_size: int):
    from owl3.kb.embed import embed_images

    return lambda images: embed_images(model, images, batch_size)


def _items(n: int) -> str:
    return f"{n} item" if n == 1 else f"{n} items"


def _report(kb, report, verb: str) -> None:
    for item_id, why in report.skipped:
        print(f"skipped item {item_id!r}: {why}", file=sys.stderr)
    replaced = f"{report.replaced} replaced, " if report.replaced else ""
    print(
        f"{verb} {_items(report.added)} ({replaced}{len(report.skipped)} skipped) -> {kb.path} "
        f"({_items(len(kb))})",
        file=sys.stderr,
    )


def cmd_build(args: argparse.Namespace) -> int:
    from owl3.kb.embed import weights_hash
    from owl3.kb.items import read_items
    from owl3.kb.store import KnowledgeBase

    items = read_items(args.items)
    model, name = _load_model(args.model, args.dtype, args.device)
    kb = KnowledgeBase.create(
        args.output, name, weights_hash(model), model.cfg.text.dim, model.cfg.image_size, args.overwrite
    )
    try:
        report = kb.add(items, _embedder(model, args.batch_size), args.strict, True, args.batch_size)
    except BaseException:  # --strict refused an item, or the user stopped it: leave no half-built KB
        shutil.rmtree(kb.path, ignore_errors=True)
        raise
    _report(kb, report, "built")
    return 0


def cmd_add(args: argparse.Namespace) -> int:
    from owl3.kb.embed import weights_hash
    from owl3.kb.items import read_items
    from owl3.kb.store import open_kb

    kb = open_kb(args.kb)
    items = read_items(args.items)
    model, name = _model_of_kb(args, kb)
    kb.check_model(weights_hash(model), name)
    report = kb.add(items, _embedder(model, args.batch_size), args.strict, True, args.batch_size)
    _report(kb, report, "added")
    return 0


def cmd_search(args: argparse.Namespace) -> int:
    from owl3.kb.store import open_kb

    if not args.image and not (args.text or "").strip():
        raise Owl3Error('nothing to search for: give --image PATH, --text "..." or both')
    kb = open_kb(args.kb)
    vector = None
    if args.image:
        from owl3.kb.embed import embed_images, weights_hash

        model, name = _model_of_kb(args, kb)
        kb.check_model(weights_hash(model), name)
        vector = embed_images(model, [args.image])[0]
    hits = kb.search(text=args.text, vector=vector, top_k=args.top_k)
    if args.json:
        for h in hits:
            print(json.dumps(h.to_dict(), ensure_ascii=False))
        return 0
    if not hits:
        print("no item matches (a text query finds items whose text shares a word with it)", file=sys.stderr)
        return 0
    width = max([2, *(len(h.id) for h in hits)])
    print(f"{'#':>2}  {'id':<{width}}  {'score':>8}  text")
    for n, h in enumerate(hits, 1):
        text = h.text if len(h.text) <= 70 else h.text[:67] + "..."
        print(f"{n:>2}  {h.id:<{width}}  {h.score:>8.4f}  {text}")
    return 0


def cmd_info(args: argparse.Namespace) -> int:
    from owl3.kb.store import open_kb

    info = open_kb(args.kb).info()
    if args.json:
        print(json.dumps(info))
        return 0
    for key in (
        "path",
        "items",
        "with_image",
        "text_only",
        "size_mb",
        "model",
        "weights_sha256",
        "dim",
        "image_size",
        "embedding",
    ):
        print(f"{key:>15}: {info[key]}")
    return 0


def _model_args(p: argparse.ArgumentParser, default: str) -> None:
    g = p.add_argument_group("model")
    g.add_argument("--model", metavar="DIR", default=None, help=f"checkpoint folder (default: {default})")
    g.add_argument("--dtype", default="float32", help="float32, bfloat16 or float16 (default: float32)")
    g.add_argument("--device", default="cpu", help="cpu, cuda, cuda:N or mps (default: cpu)")


def _item_args(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "items",
        metavar="ITEMS",
        help='a folder of images (+ same-name .txt) or a JSONL of {"id", '
        '"image"?, "text"?} lines (image paths relative to the file)',
    )
    p.add_argument("--strict", action="store_true", help="refuse the whole input if an image is unreadable")
    p.add_argument("--batch-size", type=int, default=32, metavar="N", help="images per forward (32)")


def add_parser(sub: argparse._SubParsersAction) -> None:
    kb = sub.add_parser(
        "kb",
        help="knowledge bases for answers with evidence: build, add, search, info",
        description="Knowledge bases of image+text items on disk (LanceDB), embedded with the model's own "
        "vision path; answer from one with 'owl3 generate --kb KB'. See docs/rag.md.",
    )
    ksub = kb.add_subparsers(dest="kb_command", metavar="COMMAND", required=True)

    b = ksub.add_parser(
        "build",
        help="embed items into a new knowledge base",
        description="Embed a folder or JSONL of items into a new knowledge base.",
    )
    _item_args(b)
    b.add_argument("-o", "--output", required=True, metavar="KB", help="the knowledge base folder to create")
    b.add_argument("--overwrite", action="store_true", help="replace an existing knowledge base there")
    _model_args(b, "the built-in model")
    b.set_defaults(func=cmd_build)

    a = ksub.add_parser(
        "add",
        help="add (or replace, by id) items in a knowledge base",
        description="Add items to a knowledge base; an item with an existing id replaces it.",
    )
    a.add_argument("kb", metavar="KB", help="the knowledge base folder")
    _item_args(a)
    _model_args(a, "the model the knowledge base records")
    a.set_defaults(func=cmd_add)

    s = ksub.add_parser(
        "search",
        help="the best items for an image and/or a text query",
        description="Rank items by image similarity (--image), BM25 (--text) or both "
        "(reciprocal-rank fusion).",
    )
    s.add_argument("kb", metavar="KB", help="the knowledge base folder")
    s.add_argument("--image", metavar="PATH", default=None, help="a query image")
    s.add_argument("--text", metavar="TEXT", default=None, help="a text query")
    s.add_argument("--top-k", type=int, default=5, metavar="K", help="how many items (5)")
    s.add_argument("--json", action="store_true", help="one JSON line per hit: id, score, text")
    _model_args(s, "the model the knowledge base records")
    s.set_defaults(func=cmd_search)

    i = ksub.add_parser(
        "info",
        help="what a knowledge base holds and which model embedded it",
        description="Describe a knowledge base.",
    )
    i.add_argument("kb", metavar="KB", help="the knowledge base folder")
    i.add_argument("--json", action="store_true", help="one JSON object")
    i.set_defaults(func=cmd_info)
