"""First-token time and decode time of the two checkpoint families, side by side in one process.

    python benchmarks/family_speed.py [--presets small,small-241101] [--images 8] [--new-tokens 32]
                                      [--rounds 3] [--device cpu] [--dtype float32]

Each preset gets random weights (seed 0) and the same tokenizer-free many-image prompt
(owl3.bench.common.synthetic_prompt); the presets take turns for `--rounds` rounds, each request through
a fresh engine with no media cache, and the medians are reported. `small-241101` differs from `small` in
its hyper attention (fused vs gated), its projector (2 layers vs 1) and its hyper-layer depths, so the
ratio is that of the two families at that size, not of the attention kernels alone. Prints a table and
one final JSON line.
"""

from __future__ import annotations

import argparse
import json
import statistics
import time

import torch

from owl3.bench.common import free_token_id, random_images, random_model, sync, synthetic_prompt
from owl3.config import preset
from owl3.inference.engine import Engine
from owl3.inference.sampling import SamplingParams
from owl3.processing import Encoding
from owl3.processing.pixels import images_to_pixels


def measure(model, enc: Encoding, new_tokens: int) -> tuple[float, float]:
    """(first-token seconds, decode ms per token) of one greedy request."""
    engine = Engine(model, stop_token_ids=(), pad_token_id=0, media_cache_mb=0)
    sync(model.device)
    start, times = time.perf_counter(), []
    for _ in engine.generate([enc], SamplingParams(max_new_tokens=new_tokens)):
        sync(model.device)
        times.append(time.perf_counter())
    return times[0] - start, (times[-1] - times[0]) / max(1, len(times) - 1) * 1e3


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--presets", default="small,small-241101")
    p.add_argument("--images", type=int, default=8)
    p.add_argument("--new-tokens", type=int, default=32)
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument("--device", default="cpu")
    p.add_argument("--dtype", default="float32")
    args = p.parse_args()
    subjects = {}
    for name in args.presets.split(","):
        cfg = preset(name)
        model = random_model(cfg, args.dtype, args.device, seed=0)
        ids, starts = synthetic_prompt(args.images, free_token_id(cfg), cfg.text.vocab_size)
        pixels = images_to_pixels(random_images(args.images, 320, 240), cfg.image_size)
        subjects[name] = (model, Encoding(ids, pixels, starts, ""))
    runs: dict[str, list[tuple[float, float]]] = {n: [] for n in subjects}
    with torch.inference_mode():
        for model, enc in subjects.values():  # warm-up
            measure(model, enc, 2)
        for _ in range(args.rounds):
            for name, (model, enc) in subjects.items():
                runs[name].append(measure(model, enc, args.new_tokens))
    rows = []
    for name, r in runs.items():
        rows.append(
            {
                "preset": name,
                "variant": preset(name).variant,
                "ftl_s": round(statistics.median(x[0] for x in r), 4),
                "decode_ms_per_token": round(statistics.median(x[1] for x in r), 3),
            }
        )
    base = rows[0]
    for r in rows:
        r["ftl_ratio"] = round(r["ftl_s"] / base["ftl_s"], 3)
        r["decode_ratio"] = round(r["decode_ms_per_token"] / base["decode_ms_per_token"], 3)
    keys = list(rows[0])
    print(" | ".join(keys))
    for r in rows:
        print(" | ".join(str(r[k]) for k in keys))
    report = {"images": args.images, "new_tokens": args.new_tokens, "rounds": args.rounds}
    print(json.dumps({**report, "device": args.device, "dtype": args.dtype, "results": rows}))


if __name__ == "__main__":
    main()
