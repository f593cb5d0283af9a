"""`owl3 <command>`: argument wiring only; each command calls the Python API.

A user's mistake (bad path, bad media, wrong placeholder count, ...) is printed as one line on stderr
with exit code 2; there is never a traceback for it.
"""

from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Sequence
from pathlib import Path

from owl3.errors import Owl3Error

PROG = "owl3"


def _add_model_args(p: argparse.ArgumentParser) -> None:
    g = p.add_argument_group("model")
    g.add_argument(
        "--model",
        metavar="DIR",
        default=None,
        help="checkpoint folder in the official mPLUG-Owl3 layout (default: the built-in model)",
    )
    g.add_argument("--dtype", default="float32", help="float32, bfloat16 or float16 (default: float32)")
    g.add_argument("--device", default="cpu", help="cpu, cuda, cuda:N, mps or auto (default: cpu)")


def _add_media_args(p: argparse.ArgumentParser) -> None:
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


def _add_sampling_args(p: argparse.ArgumentParser) -> None:
    g = p.add_argument_group("sampling")
    g.add_argument("--max-new-tokens", type=int, default=1024, metavar="N", help="answer length limit (1024)")
    g.add_argument("--temperature", type=float, default=0.0, help="0 = greedy (default)")
    g.add_argument("--top-p", type=float, default=1.0, help="nucleus sampling mass (1 = off)")
    g.add_argument("--top-k", type=int, default=0, help="keep the K most likely tokens (0 = off)")
    g.add_argument("--repetition-penalty", type=float, default=1.0, help="1 = off")
    g.add_argument("--seed", type=int, default=None, help="random seed for sampling")
    g.add_argument("--system", default=None, metavar="TEXT", help="a system prompt")


def _sampling(args: argparse.Namespace) -> dict:
    return dict(
        max_new_tokens=args.max_new_tokens,
        temperature=args.temperature,
        top_p=args.top_p,
        top_k=args.top_k,
        repetition_penalty=args.repetition_penalty,
        seed=args.seed,
    )


def _media(args: argparse.Namespace) -> dict:
    return dict(cut=args.cut, frames=args.frames, fps=args.fps, max_frames=args.max_frames)


def _load(args: argparse.Namespace):
    import owl3

    return owl3.load(args.model, dtype=args.dtype, device=args.device)


def cmd_generate(args: argparse.Namespace) -> int:
    if args.memory is not None:
        return _generate_from_memory(args)
    pipe = _load(args)
    messages = [{"role": "system", "content": args.system}] if args.system else []
    messages.append({"role": "user", "content": args.prompt})
    for piece in pipe.stream(
        messages,
        images=args.image,
        videos=args.video,
        progress=True,
        **_media(args),
        **_sampling(args),
    ):
        sys.stdout.write(piece)
        sys.stdout.flush()
    sys.stdout.write("\n")
    return 0


def _generate_from_memory(args: argparse.Namespace) -> int:
    if args.image or args.video:
        raise Owl3Error("--memory already holds the media; drop --image/--video (or encode them anew)")
    if args.system:
        raise Owl3Error(
            "--memory keeps the system prompt it was encoded with; pass --system to 'owl3 encode'"
        )
    pipe = _load(args)
    for piece in pipe.ask_stream(args.memory, args.prompt, **_sampling(args)):
        sys.stdout.write(piece)
        sys.stdout.flush()
    sys.stdout.write("\n")
    return 0


VIDEO_SUFFIXES = {".mp4", ".mkv", ".webm", ".avi", ".mov", ".m4v", ".mpg", ".mpeg", ".ts", ".flv", ".wmv"}


def cmd_encode(args: argparse.Namespace) -> int:
    import time

    images, videos = list(args.image), list(args.video)
    for m in args.media:  # positional media: videos by their suffix, the rest as images
        (videos if Path(m).suffix.lower() in VIDEO_SUFFIXES else images).append(m)
    if not images and not videos:
        raise Owl3Error(
            "nothing to encode: pass image or video files (e.g. owl3 encode movie.mp4 -o movie.owl3)"
        )
    pipe = _load(args)
    t0 = time.perf_counter()
    mem = pipe.watch(
        images,
        videos,
        system=args.system,
        progress=True,
        **_media(args),
    )
    out = mem.save(args.output)
    size = out.stat().st_size / 2**20
    print(
        f"encoded {mem.n_views} views ({mem.n_views * mem.tokens_per_image} visual tokens, "
        f"{mem.prefix_ids.shape[0]} prompt tokens) in {time.perf_counter() - t0:.2f} s "
        f"-> {out} ({size:.1f} MB)\n"
        f'ask it: owl3 generate --memory {out} "your question"',
        file=sys.stderr,
    )
    return 0


CHAT_HELP = """commands: /image PATH  attach an image to your next message
          /video PATH  attach a video to your next message
          /reset       forget the conversation    /quit  leave (or Ctrl-D)"""


def cmd_chat(args: argparse.Namespace) -> int:
    pipe = _load(args)
    interactive = sys.stdin.isatty()
    history: list[dict[str, str]] = [{"role": "system", "content": args.system}] if args.system else []
    images: list[str] = []
    videos: list = []
    pending_images, pending_videos = list(args.image), list(args.video)
    if interactive:
        print(f"owl3 chat with {pipe.path}\n{CHAT_HELP}", file=sys.stderr)
    while True:
        try:
            line = input("you> " if interactive else "")
        except EOFError:
            return 0
        line = line.strip()
        if not line:
            continue
        if line in ("/quit", "/exit"):
            return 0
        if line == "/reset":
            history = history[:1] if args.system else []
            images, videos, pending_images, pending_videos = [], [], [], []
            print("(conversation cleared)", file=sys.stderr)
            continue
        if line.startswith(("/image ", "/video ")):
            kind, _, path = line.partition(" ")
            path = path.strip()
            if not Path(path).is_file():
                print(f"owl3: error: no such file: {path}", file=sys.stderr)
                continue
            (pending_images if kind == "/image" else pending_videos).append(path)
            print(f"(attached {path} to your next message)", file=sys.stderr)
            continue
        if line.startswith("/"):
            print(f"owl3: unknown command {line.split()[0]}\n{CHAT_HELP}", file=sys.stderr)
            continue
        tags = pipe.processor.image_token * len(pending_images) + pipe.processor.video_token * len(
            pending_videos
        )
        turn = {"role": "user", "content": (tags + "\n" if tags else "") + line}
        try:
            frames = [
                pipe.load_video(
                    v, frames=args.frames, fps=args.fps, max_frames=args.max_frames, progress=True
                )
                for v in pending_videos
            ]
            messages = history + [turn]
            all_images, all_videos = images + pending_images, videos + frames
            out = []
            print("owl3> " if interactive else "", end="", flush=True)
            for piece in pipe.stream(
                messages, images=all_images, videos=all_videos, cut=args.cut, **_sampling(args)
            ):
                out.append(piece)
                print(piece, end="", flush=True)
            print()
        except Owl3Error as e:  # a bad attachment must not end the session
            print(f"owl3: error: {e}", file=sys.stderr)
            pending_images, pending_videos = [], []
            continue
        history += [turn, {"role": "assistant", "content": "".join(out)}]
        images, videos = all_images, all_videos
        pending_images, pending_videos = [], []


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog=PROG,
        description="owl3: run mPLUG-Owl3 on images, many images and videos.",
        epilog="Run 'owl3 COMMAND --help' for a command's options.",
    )
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)

    g = sub.add_parser(
        "generate",
        help="answer one prompt, streaming the answer to stdout",
        description="Answer one prompt about images and videos, streaming the answer. "
        "Without <|image|>/<|video|> placeholders, the media go before the prompt.",
    )
    g.add_argument("prompt", help="the question or instruction")
    g.add_argument(
        "--memory",
        metavar="FILE",
        default=None,
        help="answer from media saved by 'owl3 encode' (no re-encoding); same --model as there",
    )
    _add_model_args(g)
    _add_media_args(g)
    _add_sampling_args(g)
    g.set_defaults(func=cmd_generate)

    e = sub.add_parser(
        "encode",
        help="watch once: encode a video or images to a memory file for later questions",
        description="Encode a video or a set of images once and save the result (visual K/V and the "
        "prompt prefix's KV cache, safetensors) for 'owl3 generate --memory FILE QUESTION'.",
    )
    e.add_argument("media", nargs="*", help="video or image files (videos recognized by their suffix)")
    e.add_argument("-o", "--output", required=True, metavar="FILE", help="the memory file to write (.owl3)")
    e.add_argument("--system", default=None, metavar="TEXT", help="a system prompt kept with the memory")
    _add_model_args(e)
    _add_media_args(e)
    e.set_defaults(func=cmd_encode)

    from owl3.bench.command import add_parser as add_bench_parser  # `owl3 bench latency|video|memory`

    add_bench_parser(sub)

    c = sub.add_parser(
        "chat",
        help="interactive multi-turn chat; attach images/videos per turn",
        description="Interactive multi-turn chat. Type /image PATH or /video PATH to attach "
        "media to your next message, /reset to start over, /quit to leave.",
    )
    _add_model_args(c)
    _add_media_args(c)
    _add_sampling_args(c)
    c.set_defaults(func=cmd_chat)

    from owl3.evaluation.command import add_parser as add_eval_parser  # `owl3 eval TASK ...`

    add_eval_parser(sub)

    from owl3.demo.command import add_parser as add_demo_parser  # `owl3 demo`, `owl3 demo-train`

    add_demo_parser(sub)

    from owl3.training.cli import add_build_parser, add_train_parser  # `owl3 train`, `owl3 build`

    add_train_parser(sub)
    add_build_parser(sub)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        return args.func(args)
    except Owl3Error as e:
        print(f"{PROG}: error: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(file=sys.stderr)
        return 130
    except BrokenPipeError:
        # the reader went away (`owl3 bench latency | head`): stop quietly, as other command-line tools do
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 141


if __name__ == "__main__":
    sys.exit(main())
