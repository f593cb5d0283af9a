"""`owl3 generate`, `owl3 encode`, `owl3 chat`: the pipeline's own commands (owl3/api.py does the work).

A user's mistake (bad path, bad media, wrong placeholder count, ...) raises `Owl3Error`, which owl3/cli.py
prints as one line with exit code 2; `owl3 chat` reports a bad attachment and goes on.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from owl3.errors import Owl3Error
from owl3.options import (
    DEFAULT_MAX_PIXELS,
    add_media_args,
    add_model_args,
    add_sampling_args,
    load_pipeline,
    media_kwargs,
    sampling_kwargs,
)


def cmd_generate(args: argparse.Namespace) -> int:
    if args.memory is not None:
        return _generate_from_memory(args)
    if args.kb is not None or args.attribution or args.attribution_measure:
        return _generate_with_sources(args)
    pipe = load_pipeline(args)
    messages = [{"role": "system", "content": args.system}] if args.system else []
    messages.append({"role": "user", "content": args.prompt})
    for piece in pipe.stream(
        messages,
        images=args.image,
        videos=args.video,
        progress=True,
        **media_kwargs(args),
        **sampling_kwargs(args),
    ):
        sys.stdout.write(piece)
        sys.stdout.flush()
    sys.stdout.write("\n")
    return 0


def _generate_with_sources(args: argparse.Namespace) -> int:
    """--kb (retrieve, answer, cite) or --attribution: the answer, then its table of sources."""
    pipe = load_pipeline(args)
    messages = [{"role": "system", "content": args.system}] if args.system else []
    messages.append({"role": "user", "content": args.prompt})
    sampling = sampling_kwargs(args)
    measure = args.attribution_measure or "attention"
    if args.kb is not None:
        # with a knowledge base, --top-k counts the retrieved items (docs/rag.md)
        sampling.pop("top_k")
        out = pipe.generate(
            messages,
            images=args.image,
            videos=args.video,
            kb=args.kb,
            top_k=args.top_k,
            attribution=measure,
            **media_kwargs(args),
            **sampling,
        )
    else:
        media = {**media_kwargs(args), **sampling}
        out = pipe.generate(messages, images=args.image, videos=args.video, attribution=measure, **media)
    print(out.text)
    if out.citations == []:
        print("\nSources: no item of the knowledge base matched the question", file=sys.stderr)
    elif out.citations is not None:
        query = out.shares[-1].share if args.image and out.shares else None
        print("\n" + sources_table(out.citations, query))
    asked = args.attribution or args.attribution_measure
    if out.shares and (asked or args.kb is None):
        print("\n" + shares_table(out.shares, measure))
    elif asked and not out.shares:
        print(f"(no images or video frames: no {measure} shares)", file=sys.stderr)
    return 0


def _short(text: str, width: int = 60) -> str:
    text = " ".join(text.split())
    return text if len(text) <= width else text[: width - 3] + "..."


def sources_table(citations, query_share: float | None = None) -> str:
    """The "Sources" table of an answer from a knowledge base (and the query image's share)."""
    width = max([2, *(len(c.id) for c in citations)] + ([11] if query_share is not None else []))
    lines = ["Sources", f"{'#':>2}  {'id':<{width}}  {'score':>8}  {'share':>6}  text"]
    for c in citations:
        share = "-" if c.share is None else f"{100 * c.share:.1f}%"
        lines.append(f"{c.n:>2}  {c.id:<{width}}  {c.score:>8.4f}  {share:>6}  {_short(c.text)}")
    if query_share is not None:
        lines.append(f"{'':>2}  {'query image':<{width}}  {'':>8}  {100 * query_share:5.1f}%")
    return "\n".join(lines)


def shares_table(shares, measure: str = "attention") -> str:
    """Each image's (and video frame's) share of the answer's hyper-attention (or, by `measure`
    "gradient", of what the answer depends on), with a bar, and its share within each hyper layer alone."""
    layers = list(shares[0].by_layer) if shares else []
    head = "".join(f"  {'layer ' + str(i):>8}" for i in layers)
    lines = [f"{measure.capitalize() + ' share':<31}{head}  (hyper layers, 0-based)"]
    for s in shares:
        per = "".join(f"  {100 * s.by_layer[i]:7.1f}%" for i in layers)
        lines.append(f"  {s.label:<20} {100 * s.share:5.1f}%   {per}  {'#' * round(30 * s.share)}")
    return "\n".join(lines)


def _media_options_given(args: argparse.Namespace) -> list[str]:
    """The media options on the command line that differ from their defaults."""
    given = [name for name, value in (("--frames", args.frames), ("--fps", args.fps),
                                      ("--max-frames", args.max_frames)) if value is not None]
    if args.cut is not None:
        given.append("--crop" if args.cut else "--no-crop")
    if args.max_pixels != DEFAULT_MAX_PIXELS:
        given.append("--max-pixels")
    if args.official_pixels:
        given.append("--official-pixels")
    return given


def _generate_from_memory(args: argparse.Namespace) -> int:
    if args.kb is not None or args.attribution or args.attribution_measure:
        raise Owl3Error("--memory cannot be combined with --kb or --attribution")
    if args.image or args.video:
        raise Owl3Error("--memory already holds the media; drop --image/--video (or encode them anew)")
    if args.system:
        raise Owl3Error(
            "--memory keeps the system prompt it was encoded with; pass --system to 'owl3 encode'"
        )
    given = _media_options_given(args)
    if given:
        verb = "does" if len(given) == 1 else "do"
        raise Owl3Error(
            f"{', '.join(given)} {verb} not apply with --memory: the memory holds media already sampled and "
            "encoded; pass them to 'owl3 encode' instead"
        )
    pipe = load_pipeline(args)
    for piece in pipe.ask_stream(args.memory, args.prompt, **sampling_kwargs(args)):
        sys.stdout.write(piece)
        sys.stdout.flush()
    sys.stdout.write("\n")
    return 0


def cmd_encode(args: argparse.Namespace) -> int:
    import time

    from owl3.api import media_kind

    images, videos = list(args.image), list(args.video)
    for m in args.media:  # positional media: videos by their suffix (or content), the rest as images
        (videos if media_kind(m) == "video" else images).append(m)
    if not images and not videos:
        raise Owl3Error(
            "nothing to encode: pass image or video files (e.g. owl3 encode movie.mp4 -o movie.owl3)"
        )
    pipe = load_pipeline(args)
    t0 = time.perf_counter()
    mem = pipe.watch(
        images,
        videos,
        system=args.system,
        progress=True,
        **media_kwargs(args),
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


CHAT_HELP = """commands: /image PATH  attach an image to your next message ("quote" paths with spaces)
          /video PATH  attach a video to your next message
          /reset       forget the conversation    /quit  leave (or Ctrl-D)
          Ctrl-C       stop the answer (the conversation stays); at the prompt, twice to leave"""


def cmd_chat(args: argparse.Namespace) -> int:
    pipe = load_pipeline(args)
    return chat_session(pipe, args, input)


def _attach(line: str) -> tuple[str, list[str]]:
    """`/image PATH...` -> ("/image", [paths]); paths may be quoted as in a shell."""
    import shlex

    kind, _, rest = line.partition(" ")
    rest = rest.strip()
    if rest and Path(rest).expanduser().is_file():  # a path with spaces, unquoted, as it always worked
        return kind, [str(Path(rest).expanduser())]
    try:
        paths = shlex.split(rest)
    except ValueError as e:  # an unclosed quote
        raise Owl3Error(f"cannot read the path in {line!r} ({e}); close the quote") from None
    if not paths:
        what = "an image" if kind == "/image" else "a video"
        raise Owl3Error(f'{kind} needs a path: {kind} PATH attaches {what} to your next message, e.g. '
                        f'{kind} "my {kind[1:]}.{"jpg" if kind == "/image" else "mp4"}"')
    return kind, [str(Path(p).expanduser()) for p in paths]


def chat_session(pipe, args: argparse.Namespace, read=input) -> int:
    """The chat loop over `pipe`; `read(prompt)` gives the user's lines (EOFError ends the session).

    Ctrl-C while an answer streams stops that answer and keeps the conversation (the partial answer
    included); Ctrl-C at the prompt asks for a second one (or /quit) to leave."""
    interactive = sys.stdin.isatty()
    history: list[dict[str, str]] = [{"role": "system", "content": args.system}] if args.system else []
    images: list[str] = []
    videos: list = []
    pending_images, pending_videos = list(args.image), list(args.video)
    media = dict(max_pixels=args.max_pixels)
    if interactive:
        print(f"owl3 chat with {pipe.path}\n{CHAT_HELP}", file=sys.stderr)
    interrupted = False  # the last prompt ended with Ctrl-C
    while True:
        try:
            line = read("you> " if interactive else "")
        except EOFError:
            return 0
        except KeyboardInterrupt:
            if interrupted:
                print(file=sys.stderr)
                return 0
            interrupted = True
            print("\n(Ctrl-C again or /quit to leave)", file=sys.stderr)
            continue
        interrupted = False
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
        if line.split()[0] in ("/image", "/video"):
            try:
                kind, paths = _attach(line)
            except Owl3Error as e:
                print(f"owl3: error: {e}", file=sys.stderr)
                continue
            for path in paths:
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
        out: list[str] = []
        pieces = None
        try:
            frames = [
                pipe.load_video(
                    v, frames=args.frames, fps=args.fps, max_frames=args.max_frames, progress=True, **media
                )
                for v in pending_videos
            ]
            messages = history + [turn]
            all_images, all_videos = images + pending_images, videos + frames
            print("owl3> " if interactive else "", end="", flush=True)
            pieces = pipe.stream(
                messages, images=all_images, videos=all_videos, cut=args.cut, **media, **sampling_kwargs(args)
            )
            for piece in pieces:
                out.append(piece)
                print(piece, end="", flush=True)
            print()
        except Owl3Error as e:  # a bad attachment must not end the session
            print(f"owl3: error: {e}", file=sys.stderr)
            pending_images, pending_videos = [], []
            continue
        except KeyboardInterrupt:  # stop this answer, keep the conversation
            if pieces is not None:
                pieces.close()  # the engine drops the request
            print(flush=True)  # end the answer's line
            if not out:  # stopped before the answer began: as if the message was never sent
                print("(stopped; your attachments stay for the next message)", file=sys.stderr)
                continue
            print("(stopped; the partial answer stays in the conversation)", file=sys.stderr)
        history += [turn, {"role": "assistant", "content": "".join(out)}]
        images, videos = all_images, all_videos
        pending_images, pending_videos = [], []


def add_parser(sub: argparse._SubParsersAction) -> None:
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
    g.add_argument(
        "--kb",
        metavar="KB",
        default=None,
        help="answer from a knowledge base ('owl3 kb build'): retrieve --top-k items (default 4), put them "
        "in the prompt, and print the answer with a Sources table; --image is the query image",
    )
    g.add_argument(
        "--attribution",
        action="store_true",
        help="after the answer, print each image's (and video frame's) share of its hyper-attention",
    )
    g.add_argument(
        "--attribution-measure",
        choices=("attention", "gradient"),
        default=None,
        help="the share --attribution and --kb's Sources print: 'attention' (default; where the answer's "
        "hyper-attention fell) or 'gradient' (what the answer depends on: gradient x input on the hyper "
        "layers' visual K/V; one backward more). Implies --attribution",
    )
    add_model_args(g)
    add_media_args(g)
    add_sampling_args(g)
    g.set_defaults(func=cmd_generate)

    e = sub.add_parser(
        "encode",
        help="watch once: encode a video or images to a memory file for later questions",
        description="Encode a video or a set of images once and save the result (visual K/V and the "
        "prompt prefix's KV cache, safetensors) for 'owl3 generate --memory FILE QUESTION'.",
    )
    e.add_argument(
        "media", nargs="*", help="video or image files (videos told apart by suffix, else by content)"
    )
    e.add_argument("-o", "--output", required=True, metavar="FILE", help="the memory file to write (.owl3)")
    e.add_argument("--system", default=None, metavar="TEXT", help="a system prompt kept with the memory")
    add_model_args(e)
    add_media_args(e)
    e.set_defaults(func=cmd_encode)

    c = sub.add_parser(
        "chat",
        help="interactive multi-turn chat; attach images/videos per turn",
        description="Interactive multi-turn chat. Type /image PATH or /video PATH to attach "
        "media to your next message, /reset to start over, /quit to leave.",
    )
    add_model_args(c)
    add_media_args(c)
    add_sampling_args(c)
    c.set_defaults(func=cmd_chat)
