"""owl3 against the official mPLUG-Owl3 240728 code: first-token latency and decode speed, side by side.

    .venv/bin/python benchmarks/official_speed.py --official-python /work/official-venv/bin/python \\
        --official-code /work/official-code --preset small --images 1,8,32 --new-tokens 32 [--json]

It writes a random-weight checkpoint of `--preset` in the official layout (owl3's `save_model`, the
built-in model's tokenizer), then, for each image count, gives the SAME prompt and pixels to
(a) the official modeling code, run by benchmarks/official_driver.py in its own environment (transformers
4.46; the official files are not in this repository: `--official-code` is a folder of them), loaded with
`attn_implementation="sdpa"`, float32, CPU; and
(b) owl3's engine as the Python API builds it (`Engine(model, ...)` with its defaults: media cache on,
vision chunks of 64 views).

Both are greedy with no stop token, so both make exactly `--new-tokens` tokens, which must be the same.
The first-token latency (FTL) runs from the processor's output (token ids, pixel values) to the first
sampled token: vision tower, projector, visual K/V, prefill and first sample (owl3's engine hands out
its first token only after the same step's first decode step: that is in its FTL, as a user sees it).
Decode is the mean gap between the tokens after the second. Both sides run with the same torch
threads; each image count is warmed up once per side, then the two sides alternate (`--repeat` runs
each, fresh pictures every run, so owl3's media cache never hits) and the median of each is reported.
The images are decoded and transformed (owl3's transform, the same as the official processor's)
outside the timing.

`--profile DIR`: after the timed runs, the first token of the largest image count on both sides under
forward-hook module timers (printed side by side), torch.profiler (op tables `owl3_ops.txt`,
`official_ops.txt`) and cProfile (`owl3_ops.cprofile.txt`, `official_ops.cprofile.txt`).

The report is a table followed by one JSON line.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent


class Official:
    """benchmarks/official_driver.py in the official environment, answering one JSON line per command."""

    def __init__(self, python: str, code: Path, model: Path, threads: int) -> None:
        cmd = [python, str(HERE / "official_driver.py"), "--code", str(code), "--model", str(model)]
        cmd += ["--threads", str(threads)]
        env = {**os.environ, "TRANSFORMERS_VERBOSITY": "error", "TOKENIZERS_PARALLELISM": "false"}
        self.proc = subprocess.Popen(cmd, stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True, env=env)
        self.info = self._read()

    def _read(self) -> dict:
        line = self.proc.stdout.readline()
        if not line:
            raise SystemExit(f"the official driver exited (code {self.proc.wait()}); see its messages above")
        return json.loads(line)

    def ask(self, **cmd) -> dict:
        self.proc.stdin.write(json.dumps(cmd) + "\n")
        self.proc.stdin.flush()
        return self._read()

    def close(self) -> None:
        if self.proc.poll() is None:
            self.proc.stdin.write(json.dumps({"op": "quit"}) + "\n")
            self.proc.stdin.close()
            self.proc.wait(timeout=60)


class Owl3Side:
    """owl3's model and engine, as `owl3.load()` makes them, timed per request."""

    def __init__(self, ckpt: Path) -> None:
        from owl3.bench.latency import StageTimedEngine
        from owl3.checkpoint.load import load_model
        from owl3.processing import Processor

        self.model = load_model(ckpt, dtype="float32", device="cpu")
        self.processor = Processor.from_dir(ckpt, self.model.cfg.image_size)
        # the API's engine (owl3/api.py: Engine(model, stop ids, pad id), defaults otherwise), timing its
        # vision and prefill stages; no stop ids, so every run makes exactly new_tokens tokens
        self.engine = StageTimedEngine(self.model, (), self.processor.pad_token_id)

    def run(self, enc, new_tokens: int) -> dict:
        from owl3.inference.sampling import SamplingParams

        self.engine.stage_seconds = {"vision_s": 0.0, "prefill_s": 0.0}
        stamps, tokens = [], []
        t0 = time.perf_counter()
        for ev in self.engine.generate([enc], SamplingParams(max_new_tokens=new_tokens)):
            stamps.append(time.perf_counter())
            tokens.append(ev.token_id)
        # decode: the gaps after the second token (the engine's step that finishes a prefill also runs a
        # decode step, so the first two tokens come out together), the same definition on both sides
        gaps = [b - a for a, b in zip(stamps[1:], stamps[2:], strict=False)]
        return {
            "ftl_s": stamps[0] - t0,
            "vision_s": self.engine.stage_seconds["vision_s"],
            # when the first token was sampled: the vision and prefill stages, without the decode step
            # that the same engine step runs before handing the token out
            "sampled_s": sum(self.engine.stage_seconds.values()),
            "decode_ms": 1000 * sum(gaps) / len(gaps) if gaps else None,
            "tokens": tokens,
        }


def make_inputs(side: Owl3Side, n: int, seed: int, folder: Path):
    """A prompt with `n` images (the paper's "Image k: <|image|>" shape, tokenizer-free) and fresh pixels:
    owl3's Encoding and the official processor's tensors (written for the driver)."""
    from safetensors.torch import save_file

    from owl3.bench.common import random_images, synthetic_prompt
    from owl3.processing import Encoding
    from owl3.processing.pixels import images_to_pixels
    from owl3.processing.processor import official_media_offset

    cfg = side.model.cfg
    ids, starts = synthetic_prompt(n, side.processor.image_token_id, cfg.text.vocab_size, seed=seed)
    pixels = images_to_pixels(random_images(n, seed=seed), cfg.image_size)
    enc = Encoding(ids, pixels, starts, "")
    path = folder / f"inputs-{n}-{seed}.safetensors"
    save_file(
        {
            "input_ids": ids[None].contiguous(),
            "pixel_values": pixels.contiguous(),
            "media_offset": official_media_offset(enc)[None].contiguous(),
        },
        str(path),
    )
    return enc, path


def first_divergence(a: list[int], b: list[int]) -> int | None:
    for i, (x, y) in enumerate(zip(a, b, strict=False)):
        if x != y:
            return i
    return None if len(a) == len(b) else min(len(a), len(b))


def profile_owl3(side: Owl3Side, encs: list, out: Path) -> dict:
    """owl3's first token as the driver's `profile` op does it: module timers, torch.profiler, cProfile;
    and the media cache's hashing of the views on its own. Three requests with different pictures, so the
    media cache never hits."""
    import cProfile
    import io
    import pstats

    from torch.profiler import ProfilerActivity, profile

    sys.path.insert(0, str(HERE))
    from official_driver import module_times

    got = {}
    secs, calls = module_times(side.model, lambda: got.update(side.run(encs[0], 1)))
    with profile(activities=[ProfilerActivity.CPU]) as prof:
        side.run(encs[1], 1)
    (out / "owl3_ops.txt").write_text(prof.key_averages().table(sort_by="self_cpu_time_total", row_limit=40))
    pr = cProfile.Profile()
    pr.enable()
    side.run(encs[2], 1)
    pr.disable()
    s = io.StringIO()
    pstats.Stats(pr, stream=s).sort_stats("cumulative").print_stats(50)
    (out / "owl3_ops.cprofile.txt").write_text(s.getvalue())
    t0 = time.perf_counter()
    side.engine.media_cache.keys(encs[0].pixel_values)
    hash_s = time.perf_counter() - t0
    return {
        "ftl_s": got["ftl_s"],
        "vision_s": got["vision_s"],
        "modules_s": secs,
        "calls": calls,
        "hash_s": hash_s,
    }


def print_breakdown(n: int, off: dict, own: dict) -> None:
    sys.path.insert(0, str(HERE))
    from official_driver import GROUPS

    print(f"first token at {n} images, one run each (module wall time by forward hooks, s):")
    print(f"  {'part':42s} {'official':>9} {'calls':>5}  {'owl3':>9} {'calls':>5}")
    for _, label in GROUPS:
        a, b = off["modules_s"].get(label), own["modules_s"].get(label)
        if a is None and b is None:
            continue
        ca, cb = off["calls"].get(label, 0), own["calls"].get(label, 0)
        fa = f"{a:9.3f}" if a is not None else f"{'-':>9}"
        fb = f"{b:9.3f}" if b is not None else f"{'-':>9}"
        print(f"  {label:42s} {fa} {ca:5d}  {fb} {cb:5d}")
    print(f"  {'owl3 media-cache hashing (separately)':42s} {'-':>9} {'':5s}  {own['hash_s']:9.3f}")
    print(f"  {'first token (FTL)':42s} {off['ftl_s']:9.3f} {'':5s}  {own['ftl_s']:9.3f}")


def main() -> int:
    ap = argparse.ArgumentParser(description="owl3 against the official 240728 code, side by side")
    ap.add_argument("--official-python", required=True, help="python of the official code's environment")
    ap.add_argument("--official-code", required=True, type=Path, help="folder of the official .py files")
    ap.add_argument("--preset", default="small")
    ap.add_argument("--images", default="1,8,32", help="comma-separated image counts")
    ap.add_argument("--new-tokens", type=int, default=32)
    ap.add_argument("--repeat", type=int, default=3, help="timed runs per side and image count (median)")
    ap.add_argument("--threads", type=int, default=0, help="torch threads on both sides (0: torch's default)")
    ap.add_argument("--profile", type=Path, help="write first-token profiles of the largest count here")
    ap.add_argument("--json", action="store_true", help="print only the final JSON line")
    args = ap.parse_args()
    counts = [int(x) for x in args.images.split(",") if x.strip()]
    if not counts or min(counts) < 1 or args.new_tokens < 3 or args.repeat < 1:
        ap.error("--images needs counts >= 1, --new-tokens >= 3, --repeat >= 1")
    if not Path(args.official_python).is_file():
        ap.error(
            f"--official-python {args.official_python} does not exist (see docs/performance.md for the venv)"
        )
    if not (args.official_code / "modeling_mplugowl3.py").is_file():
        ap.error(f"{args.official_code} has no modeling_mplugowl3.py (the official 240728 files)")

    import torch

    from owl3.bench.common import machine
    from owl3.bench.serve import preset_checkpoint

    if args.threads:
        torch.set_num_threads(args.threads)
    threads = torch.get_num_threads()
    say = (lambda *a: None) if args.json else (lambda *a: print(*a, file=sys.stderr, flush=True))

    results = []
    profiles = None
    with tempfile.TemporaryDirectory(prefix="owl3-official-") as tmp:
        tmp = Path(tmp)
        ckpt = preset_checkpoint(args.preset, tmp / "ckpt")
        say(f"checkpoint: preset {args.preset} (random weights) in {ckpt}")
        side = Owl3Side(ckpt)
        off = Official(args.official_python, args.official_code, ckpt, threads)
        say(f"official: {json.dumps(off.info)}")
        try:
            for n in counts:
                enc, path = make_inputs(side, n, 10_000 + n, tmp)  # warm-up, both sides
                off.ask(op="run", inputs=str(path), new_tokens=args.new_tokens)
                side.run(enc, args.new_tokens)
                runs = {"official": [], "owl3": []}
                same = True
                for r in range(args.repeat):
                    enc, path = make_inputs(side, n, r, tmp)
                    order = ("official", "owl3") if r % 2 == 0 else ("owl3", "official")
                    got = {}
                    for who in order:
                        if who == "official":
                            got[who] = off.ask(op="run", inputs=str(path), new_tokens=args.new_tokens)
                        else:
                            got[who] = side.run(enc, args.new_tokens)
                        runs[who].append(got[who])
                    d = first_divergence(got["official"]["tokens"], got["owl3"]["tokens"])
                    if d is not None:
                        same = False
                        say(f"  {n} images, run {r}: tokens differ from position {d}")
                    say(
                        f"  {n:3d} images run {r}: FTL official {got['official']['ftl_s']:.3f} s, "
                        f"owl3 {got['owl3']['ftl_s']:.3f} s; decode {got['official']['decode_ms']:.1f} vs "
                        f"{got['owl3']['decode_ms']:.1f} ms/token"
                    )

                def med(who: str, key: str, runs=runs) -> float:
                    return statistics.median(x[key] for x in runs[who])

                row = {"images": n, "same_tokens": same}
                for who in ("official", "owl3"):
                    row[f"{who}_ftl_s"] = round(med(who, "ftl_s"), 4)
                    row[f"{who}_vision_s"] = round(med(who, "vision_s"), 4)
                    row[f"{who}_decode_ms"] = round(med(who, "decode_ms"), 2)
                row["owl3_sampled_s"] = round(med("owl3", "sampled_s"), 4)
                row["ftl_speedup"] = round(row["official_ftl_s"] / row["owl3_ftl_s"], 2)
                row["sampled_speedup"] = round(row["official_ftl_s"] / row["owl3_sampled_s"], 2)
                row["decode_speedup"] = round(row["official_decode_ms"] / row["owl3_decode_ms"], 2)
                results.append(row)
            if args.profile:
                args.profile.mkdir(parents=True, exist_ok=True)
                n = max(counts)
                enc, path = make_inputs(side, n, 20_000 + n, tmp)
                prof_off = off.ask(op="profile", inputs=str(path), out=str(args.profile / "official_ops.txt"))
                encs = [make_inputs(side, n, 20_001 + n + i, tmp)[0] for i in range(3)]
                prof_owl3 = profile_owl3(side, encs, args.profile)
                profiles = {"images": n, "official": prof_off, "owl3": prof_owl3}
                say(f"profiles of the first token at {n} images in {args.profile}")
        finally:
            off.close()

    if not args.json:
        head = (
            f"{'images':>6}  {'FTL official':>12}  {'FTL owl3':>9}  {'ratio':>6}  "
            f"{'decode official':>15}  {'decode owl3':>11}  {'ratio':>6}  same tokens"
        )
        print(f"median of {args.repeat} per side; {threads} torch threads; FTL in s, decode in ms/token")
        print(head)
        for r in results:
            print(
                f"{r['images']:>6}  {r['official_ftl_s']:>12.3f}  {r['owl3_ftl_s']:>9.3f}  "
                f"{r['ftl_speedup']:>5.2f}x  {r['official_decode_ms']:>15.2f}  {r['owl3_decode_ms']:>11.2f}  "
                f"{r['decode_speedup']:>5.2f}x  {'yes' if r['same_tokens'] else 'NO'}"
            )
        print("ratio = official time / owl3 time (above 1: owl3 is faster)")
        print("vision part of the FTL (official: tower + projector; owl3: also hashing and the visual K/V):")
        for r in results:
            off_v, own_v = r["official_vision_s"], r["owl3_vision_s"]
            print(f"  {r['images']:3d} images: official {off_v:.3f} s, owl3 {own_v:.3f} s")
        print("owl3's first token, when it was sampled (the engine hands it out before any decode step):")
        for r in results:
            sampled, ratio = r["owl3_sampled_s"], r["sampled_speedup"]
            print(f"  {r['images']:3d} images: sampled at {sampled:.3f} s: {ratio:.2f}x the official FTL")
        if profiles:
            print_breakdown(profiles["images"], profiles["official"], profiles["owl3"])
    print(
        json.dumps(
            {
                "preset": args.preset,
                "new_tokens": args.new_tokens,
                "repeat": args.repeat,
                "threads": threads,
                "machine": machine(),
                "official": {
                    k: off.info.get(k) for k in ("torch", "transformers", "vision_attn", "text_attn")
                },
                "load_avg": os.getloadavg(),
                "results": results,
                "profile": profiles,
            }
        )
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
