"""`owl3 bench latency | video | memory`: argument wiring; each benchmark's code is in its own module."""

from __future__ import annotations

import argparse


def _latency(args: argparse.Namespace) -> int:
    from owl3.bench import latency

    return latency.run(args)


def _video(args: argparse.Namespace) -> int:
    from owl3.bench import video

    return video.run(args)


def _serve(args: argparse.Namespace) -> int:
    from owl3.bench import serve

    return serve.run(args)


def _memory(args: argparse.Namespace) -> int:
    from owl3.bench import followup

    return followup.run(args)


def _with_threads(fn):
    """`fn(args)` with torch's CPU threads at `--threads` for its length (restored afterwards)."""

    def run(args: argparse.Namespace) -> int:
        if not getattr(args, "threads", None):
            return fn(args)
        import torch

        was = torch.get_num_threads()
        torch.set_num_threads(args.threads)
        try:
            return fn(args)
        finally:
            torch.set_num_threads(was)

    return run


def _subject_args(p: argparse.ArgumentParser) -> None:
    src = p.add_mutually_exclusive_group()
    src.add_argument(
        "--preset",
        default="small",
        help="random-weight preset: tiny, small, 1b, 7b, 7b-241101, small-241101 (default small)",
    )
    src.add_argument(
        "--model", metavar="DIR", default=None, help="a checkpoint folder (official layout) instead"
    )
    p.add_argument("--device", default="cpu", help="cpu, cuda, cuda:N (default: cpu)")
    p.add_argument("--dtype", default="float32", help="float32, bfloat16 or float16 (default: float32)")
    p.add_argument("--threads", type=int, default=None, metavar="N", help="CPU threads for torch")
    p.add_argument("--json", action="store_true", help="print only the JSON line")


def add_parser(sub) -> None:
    b = sub.add_parser(
        "bench",
        help="measure first-token latency, decode speed, memory, video sampling",
        description="Benchmarks. Each prints a table and ends with one JSON line.",
    )
    bs = b.add_subparsers(dest="bench_command", metavar="BENCH", required=True)

    lat = bs.add_parser(
        "latency",
        help="FTL, decode ms/token and peak memory vs number of images: owl3, official, concat",
        description="First-token latency (decoded RGB images in memory -> first token), decode time per "
        "token and peak memory for each method and image count, on one model's weights. Methods: owl3 "
        "(visual K/V cached), official (visual K/V recomputed at every decode step, as the official code), "
        "concat (LLaVA-Interleave-style: visual tokens in the LLM's sequence).",
    )
    _subject_args(lat)
    lat.add_argument("--images", default="1,8,32", metavar="N,N,..", help="image counts (default 1,8,32)")
    lat.add_argument("--new-tokens", type=int, default=32, metavar="T", help="tokens generated (default 32)")
    lat.add_argument("--methods", default="owl3,official,concat", help="comma-separated (default: all three)")
    lat.add_argument("--plot", metavar="FILE.png", default=None, help="write FTL/decode/memory plots")
    lat.add_argument(
        "--repeat", type=int, default=1, metavar="R", help="best of R runs per point (default 1)"
    )
    lat.add_argument(
        "--text-per-image",
        type=int,
        default=5,
        metavar="N",
        help="text tokens before each image, as 'Image 12: ' (default 5)",
    )
    lat.add_argument("--vision-chunk", type=int, default=64, metavar="N", help="images per vision pass (64)")
    lat.add_argument(
        "--isolate",
        choices=("auto", "process", "none"),
        default="auto",
        help="a process of its own per point (auto: on CPU, where peak memory needs it)",
    )
    lat.add_argument("--timeout", type=float, default=None, metavar="S", help="per-point limit (isolated)")
    lat.add_argument(
        "--stop-after",
        type=float,
        default=None,
        metavar="S",
        help="a method whose point took longer than S seconds is not run at larger counts",
    )
    lat.add_argument("--compile", action="store_true", help="torch.compile the decode step")
    lat.add_argument(
        "--split-prefill",
        choices=("auto", "on", "off"),
        default="auto",
        help="the prefill's split cross-attention (auto: on CUDA only; off: the masked kernel everywhere)",
    )
    lat.set_defaults(func=_with_threads(_latency))

    vid = bs.add_parser(
        "video",
        help="frames sampled per second from a long video: exact and keyframe modes vs decoding everything",
        description="Writes a long H.264 test video with PyAV (or takes --video) and samples N frames "
        "(middle of N equal segments) by decoding everything, in exact mode and in keyframe mode.",
    )
    vid.add_argument("--video", metavar="PATH", default=None, help="benchmark this file instead")
    vid.add_argument("--seconds", type=float, default=1800, help="length of the test video (default 1800)")
    vid.add_argument("--fps", type=int, default=25, help="frame rate of the test video (default 25)")
    vid.add_argument("--gop", type=int, default=250, help="frames between keyframes (default 250)")
    vid.add_argument("--frames", default="8,32,128", metavar="N,N,..", help="frame counts (default 8,32,128)")
    vid.add_argument("--modes", default="decode-all,exact,keyframe", help="comma-separated modes")
    vid.add_argument("--keep", metavar="PATH", default=None, help="write the test video here and keep it")
    vid.add_argument("--json", action="store_true", help="print only the JSON line")
    vid.set_defaults(func=_video)

    mem = bs.add_parser(
        "memory",
        help="FTL of a follow-up question from a saved memory vs the first question",
        description="Watch once, ask many: FTL of a first question about a video, the cost of encoding "
        "and saving its memory, and the FTL of a follow-up question answered from the memory file.",
    )
    _subject_args(mem)
    mem.add_argument("--video", metavar="PATH", default=None, help="a video (default: a generated one)")
    mem.add_argument("--seconds", type=float, default=120, help="length of the generated video (default 120)")
    mem.add_argument("--frames", default="8,32", metavar="N,N,..", help="frames sampled (default 8,32)")
    mem.set_defaults(func=_with_threads(_memory))

    srv = bs.add_parser(
        "serve",
        help="throughput, TTFT and ITL of owl3 serve: continuous batching vs one request at a time",
        description="Starts owl3 serve (a random-weight --preset, or --model) on a free local port with "
        "--max-num-seqs B and then with 1, and runs 1, 4, 16 concurrent streaming HTTP clients against each: "
        "throughput (tokens/s), time to first token and inter-token latency (p50, p99).",
    )
    src = srv.add_mutually_exclusive_group()
    src.add_argument(
        "--preset", default="small", help="random-weight preset: tiny, small, 1b, 7b, 7b-241101, small-241101"
    )
    src.add_argument("--model", metavar="DIR", default=None, help="a checkpoint folder instead")
    srv.add_argument("--device", default="cpu", help="cpu, cuda, cuda:N (default: cpu)")
    srv.add_argument("--dtype", default="float32", help="float32, bfloat16 or float16 (default: float32)")
    srv.add_argument("--clients", default="1,4,16", metavar="N,N,..", help="concurrent clients (1,4,16)")
    srv.add_argument("--requests", type=int, default=2, metavar="R", help="requests per client (2)")
    srv.add_argument("--new-tokens", type=int, default=64, metavar="T", help="max_tokens a request (64)")
    srv.add_argument("--max-num-seqs", type=int, default=16, metavar="B", help="the batched setting (16)")
    srv.add_argument(
        "--followup-frames", type=int, default=32, metavar="F",
        help="also time a follow-up turn that resends an F-frame video (32; 0 = off)",
    )  # fmt: skip
    srv.add_argument("--json", action="store_true", help="print only the JSON line")
    srv.set_defaults(func=_serve)
