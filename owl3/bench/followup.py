"""`owl3 bench memory`: first-token latency of a follow-up question asked of a saved memory.

Watch once, ask many: the first question about a video pays for decoding frames, the vision tower and the
prefill of every frame's placeholder; a saved `VisualMemory` (owl3/inference/memory.py) lets a later
question skip all three. This measures, on one video and one model:
- the first question's FTL from the video file, and from frames already decoded in memory;
- the time to encode the memory and save it;
- a follow-up question's FTL from the memory file on disk (loading it included).
FTL ends when the first answer token is sampled. A preset runs on random weights with the small tokenizer
of owl3/assets/tiny-random (its ids fit every preset's vocabulary).
"""

from __future__ import annotations

import json
import tempfile
import time
from pathlib import Path
from typing import Any

import torch

from owl3.api import DEFAULT_MODEL, Owl3Pipeline
from owl3.bench.common import device_name, random_model, sync
from owl3.bench.video import write_test_video
from owl3.checkpoint.load import load_model, parse_device, parse_dtype
from owl3.config import preset
from owl3.errors import Owl3Error
from owl3.inference.sampling import SamplingParams
from owl3.processing import Processor
from owl3.processing.processor import with_241101_tokens

# a small tokenizer whose ids fit every preset's vocabulary (the parity fixture's, shipped with owl3)
TOKENIZER_DIR = Path(__file__).resolve().parent.parent / "assets" / "tiny-random"


def make_pipe(preset_name: str | None, model_dir: str | None, dtype: str, device: str) -> Owl3Pipeline:
    if model_dir is not None:
        model = load_model(model_dir, dtype=dtype, device=device)
        return Owl3Pipeline(
            model, Processor.from_dir(model_dir, model.cfg.image_size, model.cfg.variant), Path(model_dir)
        )
    cfg = preset(preset_name or "small")
    proc = Processor.from_dir(TOKENIZER_DIR if TOKENIZER_DIR.is_dir() else DEFAULT_MODEL, cfg.image_size)
    if cfg.variant == "241101":  # a 241101 shape: its templates, with their tokens added to the tokenizer
        proc = Processor(with_241101_tokens(proc.tokenizer), cfg.image_size, variant="241101")
    if proc.tokenizer.get_vocab_size() > cfg.text.vocab_size:
        raise Owl3Error(f"preset {preset_name!r} has a vocabulary smaller than the built-in tokenizer's")
    return Owl3Pipeline(random_model(cfg, dtype, device), proc, None)


def _first_token(pipe: Owl3Pipeline, start: float, encs, memory=None) -> float:
    for _ in pipe.engine.generate(encs, SamplingParams(max_new_tokens=1), memory=memory):
        break
    sync(pipe.model.device)
    return time.perf_counter() - start


def measure(pipe: Owl3Pipeline, video: Path, frames: int, memory_file: Path) -> dict[str, Any]:
    q1, q2 = "What happens in the video?", "What color is the sky at the end?"
    # warm-up: kernels and thread pools, on a 2-frame request
    _first_token(pipe, time.perf_counter(), [pipe.encode(q1, videos=[video], frames=2)])

    t0 = time.perf_counter()
    enc = pipe.encode(q1, videos=[video], frames=frames)
    ftl_file = _first_token(pipe, t0, [enc])

    clip = pipe.load_video(video, frames=frames)
    t0 = time.perf_counter()
    enc = pipe.encode(q1, videos=[clip])
    ftl_frames = _first_token(pipe, t0, [enc])

    t0 = time.perf_counter()
    mem = pipe.watch(videos=[video], frames=frames)
    mem.save(memory_file)
    encode_s = time.perf_counter() - t0

    t0 = time.perf_counter()
    mem = pipe.load_memory(memory_file)
    ftl_follow = _first_token(pipe, t0, [pipe.ask_encoding(mem, q2)], memory=mem)
    return {
        "frames": frames,
        "visual_tokens": frames * pipe.model.cfg.vision.n_tokens,
        "prompt_tokens": int(enc.input_ids.shape[0]),
        "first_ftl_from_file_s": round(ftl_file, 4),
        "first_ftl_from_frames_s": round(ftl_frames, 4),
        "encode_and_save_s": round(encode_s, 4),
        "memory_file_mb": round(memory_file.stat().st_size / 2**20, 2),
        "followup_ftl_s": round(ftl_follow, 4),
        "followup_vs_first_from_file": round(ftl_follow / ftl_file, 4),
        "followup_vs_first_from_frames": round(ftl_follow / ftl_frames, 4),
    }


def run(args) -> int:
    """The `owl3 bench memory` command."""
    dev = parse_device(args.device)
    parse_dtype(args.dtype)
    if args.model is None:
        preset(args.preset)
    counts = [int(x) for x in args.frames.split(",") if x.strip()]
    if not counts or min(counts) < 1:
        raise Owl3Error(f"--frames takes positive counts like 8,32; got {args.frames!r}")
    pipe = make_pipe(args.preset, args.model, args.dtype, str(dev))
    with tempfile.TemporaryDirectory(prefix="owl3-bench-memory-") as tmp:
        video = Path(args.video) if args.video else write_test_video(Path(tmp) / "clip.mp4", args.seconds)
        rows = []
        if not args.json:
            print(
                f"{'frames':>6} {'visual tok':>10} {'1st FTL (file) s':>16} {'1st FTL (frames) s':>18} "
                f"{'encode+save s':>13} {'file MB':>8} {'follow-up FTL s':>15} {'ratio':>7}"
            )
        for n in counts:
            row = measure(pipe, video, n, Path(tmp) / f"m{n}.owl3")
            rows.append(row)
            if not args.json:
                print(
                    f"{n:>6} {row['visual_tokens']:>10} {row['first_ftl_from_file_s']:>16.3f} "
                    f"{row['first_ftl_from_frames_s']:>18.3f} {row['encode_and_save_s']:>13.3f} "
                    f"{row['memory_file_mb']:>8.1f} {row['followup_ftl_s']:>15.4f} "
                    f"{row['followup_vs_first_from_frames']:>7.3f}",
                    flush=True,
                )
    report = {
        "preset": None if args.model else args.preset,
        "model": args.model,
        "device": dev.type,
        "device_name": device_name(dev),
        "dtype": str(parse_dtype(args.dtype)).removeprefix("torch."),
        "torch": torch.__version__,
        "date": time.strftime("%Y-%m-%d"),
        "results": rows,
    }
    print(json.dumps(report), flush=True)
    return 0
