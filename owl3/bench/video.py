"""`owl3 bench video`: how fast N frames come out of a long video, per sampling mode.

It writes a long test video with PyAV (H.264, a keyframe every `gop` frames, like camera and streaming
files) or takes yours, then samples N frames (middle of N equal segments, the official rule) three ways:
- `decode-all`: decode every frame in order and keep the wanted ones (what a reader without seeking does);
- `exact`: owl3's exact mode (one demux pass to index packets, keyframe seeks, decode forward to each frame);
- `keyframe`: owl3's fast mode (one seek per frame, the keyframe at or before it; approximate).
It reports seconds and frames delivered per second for each, and the speed-up over decode-all.
"""

from __future__ import annotations

import json
import tempfile
import time
from pathlib import Path
from typing import Any

import av
import numpy as np

from owl3.errors import Owl3Error
from owl3.processing.video import _open, frame_indices, read_video, video_info

CODEC = "libx264" if "libx264" in av.codecs_available else "mpeg4"


def write_test_video(
    path: str | Path,
    seconds: float = 1800,
    fps: int = 25,
    width: int = 256,
    height: int = 144,
    gop: int = 250,
) -> Path:
    """A synthetic video: a moving gradient with the frame number's bits as bars (cheap to encode)."""
    out = Path(path)
    n = int(round(seconds * fps))
    yy, xx = np.mgrid[0:height, 0:width]
    base = np.stack([(xx * 255 // max(1, width - 1)), (yy * 255 // max(1, height - 1)), xx * 0], -1)
    cycle = [((base + j) % 256).astype(np.uint8) for j in range(256)]  # the gradient repeats every 256
    bar_h, bar_w = max(1, height // 8), max(1, width // 16)
    with av.open(str(out), "w") as container:
        stream = container.add_stream(CODEC, rate=fps)
        stream.width, stream.height, stream.pix_fmt = width, height, "yuv420p"
        stream.gop_size = gop
        if CODEC == "libx264":
            stream.options = {
                "preset": "ultrafast",
                "g": str(gop),
                "keyint_min": str(gop),
                "sc_threshold": "0",
            }
        for i in range(n):
            img = cycle[i % 256].copy()
            for b in range(max(1, n.bit_length())):  # the frame index, readable back as bars
                if (i >> b) & 1:
                    img[:bar_h, b * bar_w : (b + 1) * bar_w] = 255
            for packet in stream.encode(av.VideoFrame.from_ndarray(img, format="rgb24")):
                container.mux(packet)
        for packet in stream.encode():
            container.mux(packet)
    return out


def decode_all(path: str | Path, indices: list[int]) -> tuple[list[Any], int]:
    """Decode every frame in order (frame threads on), keeping the wanted ones; returns them and the count."""
    want = set(indices)
    got: dict[int, Any] = {}
    n = 0
    with _open(path) as (container, stream):
        stream.thread_type = "AUTO"
        for i, frame in enumerate(container.decode(stream)):
            if i in want:
                got[i] = frame.to_image()
            n = i + 1
    return [got[i] for i in indices if i in got], n


def run_bench(path: Path, counts: list[int], modes: list[str], log=None) -> list[dict[str, Any]]:
    info = video_info(path)
    rows = []
    for n in counts:
        indices = frame_indices(info.n_frames, frames=n)
        timings: dict[str, float] = {}
        for mode in modes:
            t0 = time.perf_counter()
            if mode == "decode-all":
                frames, _ = decode_all(path, indices)
            else:
                frames = read_video(path, frames=n, mode=mode)
            dt = time.perf_counter() - t0
            timings[mode] = dt
            row = {
                "mode": mode,
                "frames": n,
                "returned": len(frames),
                "seconds": round(dt, 3),
                "frames_per_s": round(len(frames) / dt, 1) if dt > 0 else None,
            }
            rows.append(row)
        base = timings.get("decode-all")
        for row in rows[-len(modes) :]:
            took = timings[row["mode"]]  # unrounded: a rounded 0.0095 s made decode-all 0.9x of itself
            row["speedup_vs_decode_all"] = round(base / took, 1) if base and took else None
            if log:
                log(_fmt(row))
    return rows


HEADER = f"{'mode':<11} {'frames':>6} {'seconds':>8} {'frames/s':>9} {'vs decode-all':>13}"


def _fmt(r: dict[str, Any]) -> str:
    sp = r.get("speedup_vs_decode_all")
    return (
        f"{r['mode']:<11} {r['frames']:>6} {r['seconds']:>8.3f} {r['frames_per_s'] or 0:>9.1f} "
        f"{(f'{sp:.1f}x' if sp else '-'):>13}"
    )


def run(args) -> int:
    """The `owl3 bench video` command."""
    counts = [int(x) for x in args.frames.split(",") if x.strip()] if args.frames else []
    if not counts or min(counts) < 1:
        raise Owl3Error(f"--frames takes positive counts like 8,32,128; got {args.frames!r}")
    modes = [m.strip() for m in args.modes.split(",") if m.strip()]
    bad = [m for m in modes if m not in ("decode-all", "exact", "keyframe")]
    if bad or not modes:
        raise Owl3Error(f"unknown mode(s) {', '.join(bad)}; choose from decode-all, exact, keyframe")
    tmp = None
    if args.video:
        path = Path(args.video)
        gen_s = None
    else:
        if args.seconds <= 0 or args.fps <= 0:
            raise Owl3Error("--seconds and --fps must be positive")
        tmp = tempfile.TemporaryDirectory(prefix="owl3-bench-video-")
        path = Path(args.keep) if args.keep else Path(tmp.name) / "long.mp4"
        t0 = time.perf_counter()
        if not args.json:
            print(
                f"writing a {args.seconds:.0f} s test video ({args.fps} fps, "
                f"keyframe every {args.gop} frames) to {path} ...",
                flush=True,
            )
        write_test_video(path, args.seconds, args.fps, gop=args.gop)
        gen_s = time.perf_counter() - t0
    try:
        info = video_info(path)
        if not args.json:
            print(
                f"video: {info.n_frames} frames, {info.duration_s:.0f} s, {info.fps:g} fps, "
                f"{info.width}x{info.height}, {path.stat().st_size / 2**20:.1f} MB"
            )
            print(HEADER, flush=True)
        rows = run_bench(path, counts, modes, None if args.json else print)
        report = {
            "video": {
                "path": str(path) if args.video or args.keep else None,
                "frames": info.n_frames,
                "seconds": round(info.duration_s, 1),
                "fps": info.fps,
                "width": info.width,
                "height": info.height,
                "codec": CODEC if gen_s is not None else None,
                "gop": args.gop if gen_s is not None else None,
            },
            "date": time.strftime("%Y-%m-%d"),
            "results": rows,
        }
        print(json.dumps(report), flush=True)
    finally:
        if tmp is not None:
            tmp.cleanup()
    return 0
