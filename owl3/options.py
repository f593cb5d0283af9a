"""The command-line options that several `owl3` commands share: the model, the media, the sampling.

Each command's own module adds the groups it needs to its parser; nothing here imports torch (the
pipeline is loaded by `load_pipeline`, inside a command).
"""

from __future__ import annotations

import argparse

# = owl3.processing.decode.DEFAULT_MAX_PIXELS (not imported: that module loads PIL and numpy, and `--help`
# must stay light); tests/test_inputs.py checks that the two agree
DEFAULT_MAX_PIXELS = 128_000_000


def max_pixels_arg(text: str) -> int | None:
    """--max-pixels: a positive count (underscores and a trailing M for millions allowed), 0 = no limit."""
    t = text.strip().replace("_", "").lower()
    scale = 1_000_000 if t.endswith("m") else 1
    try:
        n = round(float(t.rstrip("m")) * scale)
    except (ValueError, OverflowError):
        raise argparse.ArgumentTypeError(
            f"not a pixel count: {text!r} (e.g. 200000000, 200M, or 0 = no limit)"
        ) from None
    if n < 0:
        raise argparse.ArgumentTypeError(f"must be >= 0 (0 = no limit), got {text!r}")
    return n or None


def add_pixel_args(g: argparse._ArgumentGroup, default: int = DEFAULT_MAX_PIXELS) -> None:
    """--max-pixels and --official-pixels (the commands that decode images: generate, encode, chat, serve)."""
    g.add_argument(
        "--max-pixels",
        type=max_pixels_arg,
        default=default,
        metavar="N",
        help=f"refuse images (and video frames) over N pixels before decoding them; 0 = no limit "
        f"(default: {default // 1_000_000}M)",
    )
    g.add_argument(
        "--official-pixels",
        action="store_true",
        help="make images RGB as the official code does: no EXIF orientation or video rotation, 16-bit and "
        "float images clipped, transparency dropped (for parity checks; docs/faithfulness.md)",
    )


def add_model_args(p: argparse.ArgumentParser) -> None:
    g = p.add_argument_group("model")
    g.add_argument(
        "--model",
        metavar="DIR",
        default=None,
        help="checkpoint folder in the official mPLUG-Owl3 layout (default: the built-in model)",
    )
    g.add_argument("--dtype", default="float32", help="float32, bfloat16 or float16 (default: float32)")
    g.add_argument("--device", default="cpu", help="cpu, cuda, cuda:N, mps or auto (default: cpu)")


def add_media_args(p: argparse.ArgumentParser) -> None:
    g = p.add_argument_group("images and video")
    g.add_argument(
        "--image",
        action="append",
        default=[],
        metavar="PATH",
        help="an image file; repeat for several images (in placeholder order)",
    )
    g.add_argument("--video", action="append", default=[], metavar="PATH", help="a video file; repeatable")
    rate = g.add_mutually_exclusive_group()
    rate.add_argument(
        "--frames",
        type=int,
        default=None,
        metavar="N",
        help="sample N frames per video (middle of N equal segments; default 8)",
    )
    rate.add_argument(
        "--fps",
        type=float,
        default=None,
        metavar="F",
        help="sample F frames per second instead of a fixed count",
    )
    g.add_argument(
        "--max-frames",
        type=int,
        default=None,
        metavar="N",
        help="with --fps: keep at most N frames (thinned evenly)",
    )
    crop = g.add_mutually_exclusive_group()
    crop.add_argument(
        "--crop",
        dest="cut",
        action="store_true",
        default=None,
        help="crop images into a grid plus a global view (default: only for a single image)",
    )
    crop.add_argument("--no-crop", dest="cut", action="store_false", help="never crop images")
    add_pixel_args(g)


def add_sampling_args(p: argparse.ArgumentParser) -> None:
    g = p.add_argument_group("sampling")
    g.add_argument("--max-new-tokens", type=int, default=1024, metavar="N", help="answer length limit (1024)")
    g.add_argument("--temperature", type=float, default=0.0, help="0 = greedy (default)")
    g.add_argument("--top-p", type=float, default=1.0, help="nucleus sampling mass (1 = off)")
    g.add_argument(
        "--top-k", type=int, default=None, metavar="K", help="keep the K most likely tokens (default: off)"
    )
    g.add_argument("--repetition-penalty", type=float, default=1.0, help="1 = off")
    g.add_argument("--seed", type=int, default=None, help="random seed for sampling")
    g.add_argument("--system", default=None, metavar="TEXT", help="a system prompt")


def sampling_kwargs(args: argparse.Namespace) -> dict:
    return dict(
        max_new_tokens=args.max_new_tokens,
        temperature=args.temperature,
        top_p=args.top_p,
        top_k=args.top_k or 0,  # 0 = off
        repetition_penalty=args.repetition_penalty,
        seed=args.seed,
    )


def media_kwargs(args: argparse.Namespace) -> dict:
    return dict(
        cut=args.cut, frames=args.frames, fps=args.fps, max_frames=args.max_frames, max_pixels=args.max_pixels
    )


def load_pipeline(args: argparse.Namespace):
    """The pipeline of `--model` (default: the built-in model) on `--device` in `--dtype`."""
    from owl3.api import load

    official = getattr(args, "official_pixels", False)
    return load(args.model, dtype=args.dtype, device=args.device, official_pixels=official)
