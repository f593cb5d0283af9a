"""`owl3 bench latency`: first-token latency, decode speed and peak memory against the number of images.

Three methods run on the same weights, the same prompt and the same engine code:
- `owl3`: the engine as shipped (visual K/V computed once per request, grouped-query decode attention);
- `official`: the same model recomputing every hyper layer's visual K/V at every decode step, as the
  official code does (`StageTimedEngine(recompute_visual_kv=True)`);
- `concat`: a LLaVA-Interleave-style baseline from the same vision tower and LLM, whose visual tokens go
  through every layer (owl3.bench.concat).

First-token latency (FTL) runs from decoded RGB images in memory to the first sampled token: the image
transform, vision encoding, visual K/V and prefill are all inside it. Decode time is the mean gap between
the following tokens. On CPU every (method, image count) runs in a process of its own, forked from a fork
server that imported torch once (see bench/common.py for how peak memory is read); on CUDA they share one
process and the allocator's peak is reset per point.
The report is a table followed by one JSON line.
"""

from __future__ import annotations

import gc
import json
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import torch

from owl3.bench.common import (
    device_name,
    free_token_id,
    peak_mb,
    random_images,
    random_model,
    reset_peak,
    sync,
    synthetic_prompt,
)
from owl3.bench.concat import ConcatModel, expand_image_tokens
from owl3.checkpoint.load import load_model, parse_device, parse_dtype
from owl3.config import preset
from owl3.errors import Owl3Error
from owl3.inference.engine import Engine
from owl3.inference.sampling import SamplingParams
from owl3.model import Owl3Model
from owl3.processing import Encoding
from owl3.processing.pixels import images_to_pixels

METHODS = ("owl3", "official", "concat")
CPU_MEMORY = "process resident-set high-water mark (VmHWM), a process of its own per point"
CUDA_MEMORY = "torch.cuda.max_memory_allocated"


@dataclass(frozen=True)
class LatencySpec:
    preset: str | None = "small"
    model: str | None = None  # a checkpoint folder instead of a preset
    device: str = "cpu"
    dtype: str = "float32"
    new_tokens: int = 32
    text_per_image: int = 5
    vision_chunk: int = 64
    repeat: int = 1
    seed: int = 0
    compile: bool = False
    split_prefill: bool | None = None  # the engine's choice (on CUDA only) unless forced


@dataclass
class Subject:
    model: Owl3Model
    image_token_id: int
    processor: Any = None  # a real checkpoint's Processor (tokenized prompts); None for presets


def load_subject(spec: LatencySpec) -> Subject:
    if spec.model is not None:
        from owl3.processing import Processor

        model = load_model(spec.model, dtype=spec.dtype, device=spec.device)
        proc = Processor.from_dir(spec.model, model.cfg.image_size, model.cfg.variant)
        return Subject(model, proc.image_token_id, proc)
    cfg = preset(spec.preset or "small")
    return Subject(random_model(cfg, spec.dtype, spec.device, spec.seed), free_token_id(cfg))


def make_prompt(subject: Subject, n: int, spec: LatencySpec) -> tuple[torch.Tensor, list[int]]:
    if subject.processor is None:
        cfg = subject.model.cfg
        return synthetic_prompt(n, subject.image_token_id, cfg.text.vocab_size, spec.text_per_image)
    # a real checkpoint: the paper's many-image prompt through the real template and tokenizer
    from owl3.processing.chat import chat_segments

    text = "".join(f"Image {i + 1}: <|image|> " for i in range(n)) + "In Image 1, what is shown?"
    segments = chat_segments([{"role": "user", "content": text}])
    return subject.processor._tokenize(segments)


class StageTimedEngine(Engine):
    """The engine, timing where the first token's time goes: `stage_seconds` holds the wall seconds of the
    vision side (`vision_s`: tower, projector, visual K/V) and of the text prefill with the first token
    (`prefill_s`) of the requests since the last `reset_stages()`, each ended by a device synchronization.
    `recompute_visual_kv` recomputes every hyper layer's visual K/V at every forward, as the official
    code does at every decode step."""

    def __init__(self, *args, recompute_visual_kv: bool = False, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        self.recompute_visual_kv = recompute_visual_kv
        self.stage_seconds = {"vision_s": 0.0, "prefill_s": 0.0}

    def _clock(self) -> float:
        sync(self.model.device)
        return time.perf_counter()

    def _encode_pieces(self, pieces) -> None:
        t0 = self._clock()
        if self.recompute_visual_kv:
            for req, _ in pieces:
                req.visual = self.encode_features([req.enc])
                req.visual.recompute = True
        else:
            super()._encode_pieces(pieces)
        self.stage_seconds["vision_s"] += self._clock() - t0

    def _prefill_text(self, pieces):
        t0 = self._clock()
        events = super()._prefill_text(pieces)
        self.stage_seconds["prefill_s"] += self._clock() - t0
        return events


def _engine(subject: Subject, method: str, prompt_len: int, spec: LatencySpec) -> StageTimedEngine:
    model: Any = subject.model
    if method == "concat":
        model = ConcatModel(subject.model, subject.image_token_id)
    return StageTimedEngine(
        model,
        stop_token_ids=(),  # random weights: never stop early, always time new_tokens tokens
        pad_token_id=0,
        max_model_len=prompt_len + spec.new_tokens + 1,  # the baseline may pass the LLM's context
        max_num_seqs=1,
        prefill_chunk=prompt_len,  # the whole prompt in one forward, as the official code and the baseline
        vision_chunk_size=max(spec.vision_chunk, 1),
        media_cache_mb=0,  # every point and repeat encodes its images anew
        compile_decode=spec.compile,
        split_prefill=spec.split_prefill,
        recompute_visual_kv=method == "official",
    )


def _once(subject: Subject, method: str, images, ids, starts, new_tokens: int, spec: LatencySpec):
    model = subject.model
    dev = model.device
    t_per_image = model.cfg.vision.n_tokens
    sync(dev)
    t0 = time.perf_counter()
    pixels = images_to_pixels(images, model.cfg.image_size, dev)  # (N, 3, S, S)
    sync(dev)
    pixels_s = time.perf_counter() - t0
    if method == "concat":
        ids, starts = expand_image_tokens(ids, starts, t_per_image)
    enc = Encoding(ids, pixels, starts, "")
    engine = _engine(subject, method, len(ids), spec)
    stamps = []
    for _ in engine.generate([enc], SamplingParams(max_new_tokens=new_tokens)):
        stamps.append(time.perf_counter())  # .tolist() inside the engine has synchronized
    ftl = stamps[0] - t0
    decode = (stamps[-1] - stamps[0]) / (len(stamps) - 1) if len(stamps) > 1 else float("nan")
    stages = {"pixels_s": pixels_s, **engine.stage_seconds}  # where the FTL went
    return ftl, decode, len(ids), stages


def _is_oom(e: BaseException) -> bool:
    if isinstance(e, MemoryError) or type(e).__name__ == "OutOfMemoryError":
        return True
    msg = str(e).lower()
    return isinstance(e, RuntimeError) and ("out of memory" in msg or "can't allocate memory" in msg)


def measure(subject: Subject, method: str, n: int, spec: LatencySpec, warm: bool = True) -> dict[str, Any]:
    """One point: FTL, decode ms/token and peak memory of `method` with `n` images."""
    model = subject.model
    dev = model.device
    row: dict[str, Any] = {"method": method, "images": n, "visual_tokens": n * model.cfg.vision.n_tokens}
    ids, starts = make_prompt(subject, n, spec)
    images = random_images(n, seed=spec.seed)
    try:
        if warm:  # kernels, thread pools and allocator warmed on a small request of the same method
            w_ids, w_starts = make_prompt(subject, 1, spec)
            _once(subject, method, images[:1], w_ids, w_starts, 2, spec)
        gc.collect()
        reset_peak(dev)
        best_ftl = best_dec = float("inf")
        for _ in range(spec.repeat):
            ftl, dec, seq, stages = _once(subject, method, images, ids, starts, spec.new_tokens, spec)
            if ftl < best_ftl:
                best_stages = stages
            best_ftl, best_dec = min(best_ftl, ftl), min(best_dec, dec)
        row.update(
            sequence_tokens=seq,
            ftl_s=round(best_ftl, 4),
            decode_ms_per_token=round(best_dec * 1e3, 3),
            peak_mem_mb=round(peak_mb(dev) or float("nan"), 1),
            status="ok",
            ftl_stages={k: round(v, 4) for k, v in best_stages.items()},
        )
    except Exception as e:
        if not _is_oom(e):
            raise
        row.update(ftl_s=None, decode_ms_per_token=None, peak_mem_mb=None, status="oom")
    finally:
        gc.collect()
        if dev.type == "cuda":
            torch.cuda.empty_cache()
    return row


# ---------------------------------------------------------------------- running a sweep
def _point(payload: str, conn) -> None:
    """One isolated point, in a child of the fork server: the row, or the error, back through `conn`."""
    try:
        job = json.loads(payload)
        if job.get("threads"):
            torch.set_num_threads(int(job["threads"]))
        spec = LatencySpec(**job["spec"])
        row = measure(load_subject(spec), job["method"], job["images"], spec)
        conn.send(("ok", row))
    except BaseException as e:  # reported as the point's status; the sweep goes on
        conn.send(("error", f"{type(e).__name__}: {e}".splitlines()[0]))
    finally:
        conn.close()


_FORK_SERVER = None


def _fork_server():
    """A fork server that has imported torch and owl3 but run no torch op: every isolated point is a fork
    of it, so a point pays for its own model and request only (a fresh interpreter per point spent ~2 s
    importing torch). Forking this process itself is not safe: once torch's OpenMP pool has run, a forked
    child can deadlock in its first parallel op."""
    global _FORK_SERVER
    if _FORK_SERVER is None:
        import multiprocessing

        ctx = multiprocessing.get_context("forkserver")
        ctx.set_forkserver_preload(["owl3.bench.latency"])
        _FORK_SERVER = ctx
    return _FORK_SERVER


def _run_isolated(spec: LatencySpec, method: str, n: int, timeout: float | None) -> dict[str, Any]:
    # the point runs with this process's torch threads (`owl3 bench --threads N` sets them for the run)
    threads = torch.get_num_threads()
    payload = json.dumps({"spec": asdict(spec), "method": method, "images": n, "threads": threads})
    base = {"method": method, "images": n, "ftl_s": None, "decode_ms_per_token": None, "peak_mem_mb": None}
    ctx = _fork_server()
    recv, send = ctx.Pipe(duplex=False)
    proc = ctx.Process(target=_point, args=(payload, send), daemon=True)
    proc.start()
    send.close()
    try:
        if not recv.poll(timeout):
            proc.kill()
            return {**base, "status": "timeout"}
        try:
            kind, value = recv.recv()
        except EOFError:  # the child died without a word: the kernel's out-of-memory killer, or a crash
            proc.join()
            if proc.exitcode in (-9, 137):
                return {**base, "status": "oom"}
            return {**base, "status": f"error: worker exited with {proc.exitcode}"}
    finally:
        recv.close()
        proc.join(timeout=10)
    return value if kind == "ok" else {**base, "status": f"error: {value}"}


def run_sweep(
    spec: LatencySpec,
    methods: Sequence[str],
    counts: Sequence[int],
    isolate: bool | None = None,
    timeout: float | None = None,
    log=None,
    stop_after: float | None = None,
) -> list[dict[str, Any]]:
    """Every (method, count) point, counts ascending with the methods interleaved (so a noisy machine
    hits them alike); once a method runs out of memory, or one of its points takes longer than
    `stop_after` seconds (wall clock, warm-up included), its larger counts are not tried."""
    dev = parse_device(spec.device)
    isolate = dev.type == "cpu" if isolate is None else isolate
    subject = None if isolate else load_subject(spec)
    rows = []
    stopped: dict[str, str] = {}  # method -> why its larger counts are not tried
    for n in sorted(counts):
        for method in methods:
            t0 = time.perf_counter()
            if method in stopped:
                row = {"method": method, "images": n, "ftl_s": None, "decode_ms_per_token": None}
                row.update(peak_mem_mb=None, status=stopped[method])
            elif isolate:
                row = _run_isolated(spec, method, n, timeout)
            else:
                row = measure(subject, method, n, spec)
            took = time.perf_counter() - t0
            if row["status"] == "oom":
                stopped[method] = "oom (a smaller count already was)"
            elif stop_after is not None and took > stop_after and method not in stopped:
                stopped[method] = f"skipped ({n} images took {took:.0f} s > --stop-after)"
            rows.append(row)
            if log:
                log(_fmt_row(row))
    return sorted(rows, key=lambda r: (list(methods).index(r["method"]), r["images"]))


# ---------------------------------------------------------------------- report
HEADER = (
    f"{'method':<9} {'images':>6} {'visual tok':>10} {'seq tok':>8} {'FTL s':>8} "
    f"{'pixels/vision/prefill s':>23} {'decode ms/tok':>13} {'peak MB':>9}  status"
)


def _fmt(v: Any, spec: str) -> str:
    return "-" if v is None else format(v, spec)


def _fmt_stages(stages: dict[str, float] | None) -> str:
    if not stages:
        return "-"
    return "/".join(_fmt(stages.get(k), ".3f") for k in ("pixels_s", "vision_s", "prefill_s"))


def _fmt_row(r: dict[str, Any]) -> str:
    return (
        f"{r['method']:<9} {r['images']:>6} {_fmt(r.get('visual_tokens'), 'd'):>10} "
        f"{_fmt(r.get('sequence_tokens'), 'd'):>8} {_fmt(r['ftl_s'], '.3f'):>8} "
        f"{_fmt_stages(r.get('ftl_stages')):>23} "
        f"{_fmt(r['decode_ms_per_token'], '.2f'):>13} {_fmt(r['peak_mem_mb'], '.0f'):>9}  {r['status']}"
    )


def ratios(rows: list[dict[str, Any]]) -> list[str]:
    """Per image count: official/owl3 decode, concat/owl3 FTL and memory; owl3 decode vs its 1-image value."""
    by = {(r["method"], r["images"]): r for r in rows if r["status"] == "ok"}
    counts = sorted({r["images"] for r in rows})
    out = []
    base = by.get(("owl3", counts[0])) if counts else None
    for n in counts:
        o = by.get(("owl3", n))
        if o is None:
            continue
        parts = [f"{n:>5} images:"]
        if ("official", n) in by:
            slow = by["official", n]["decode_ms_per_token"] / o["decode_ms_per_token"]
            parts.append(f"decode official/owl3 = {slow:.1f}x")
        if ("concat", n) in by:
            c = by["concat", n]
            parts.append(f"FTL concat/owl3 = {c['ftl_s'] / o['ftl_s']:.1f}x")
            parts.append(f"peak MB concat-owl3 = {c['peak_mem_mb'] - o['peak_mem_mb']:+.0f}")
        if base is not None and n != base["images"]:
            parts.append(
                f"owl3 decode vs {base['images']} image(s) = "
                f"{o['decode_ms_per_token'] / base['decode_ms_per_token']:.2f}x"
            )
        out.append("  ".join(parts))
    return out


def plot(report: dict[str, Any], path: str | Path) -> Path:
    """Three panels (FTL, decode ms/token, peak memory) against the number of images, one line per method."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError as e:
        raise Owl3Error("--plot needs matplotlib: pip install matplotlib (or owl3[bench])") from e
    rows = report["results"]
    fig, axes = plt.subplots(1, 3, figsize=(15, 4.2))
    panels = (
        ("ftl_s", "first-token latency (s)"),
        ("decode_ms_per_token", "decode (ms / token)"),
        ("peak_mem_mb", "peak memory (MB)"),
    )
    styles = {"owl3": ("tab:blue", "o"), "official": ("tab:orange", "s"), "concat": ("tab:red", "^")}
    for ax, (key, label) in zip(axes, panels, strict=True):
        for method in dict.fromkeys(r["method"] for r in rows):
            pts = [(r["images"], r[key]) for r in rows if r["method"] == method and r["status"] == "ok"]
            if not pts:
                continue
            color, marker = styles.get(method, (None, "o"))
            ax.plot(*zip(*pts, strict=True), marker=marker, color=color, label=method)
            oom = [r["images"] for r in rows if r["method"] == method and r["status"].startswith("oom")]
            if oom:
                ax.annotate(
                    f"{method}: OOM from {min(oom)}",
                    xy=(0.02, 0.95),
                    xycoords="axes fraction",
                    fontsize=8,
                    va="top",
                    color=color,
                )
        ax.set_xscale("log")
        ax.set_xlabel("images")
        ax.set_ylabel(label)
        ax.grid(True, alpha=0.3)
        ax.legend()
    src = report.get("model") or report["preset"]
    fig.suptitle(f"owl3 bench latency: {src}, {report['dtype']}, {report['device_name']}", fontsize=10)
    fig.tight_layout()
    out = Path(path)
    out.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out, dpi=110)
    plt.close(fig)
    return out


def parse_counts(text: str) -> list[int]:
    try:
        counts = [int(x) for x in text.split(",") if x.strip()]
    except ValueError:
        raise Owl3Error(f"--images takes comma-separated counts like 1,8,32; got {text!r}") from None
    if not counts or min(counts) < 1:
        raise Owl3Error(f"--images needs positive counts like 1,8,32; got {text!r}")
    return counts


def parse_methods(text: str) -> list[str]:
    methods = [m.strip() for m in text.split(",") if m.strip()]
    bad = [m for m in methods if m not in METHODS]
    if bad or not methods:
        raise Owl3Error(f"unknown method(s) {', '.join(bad) or text!r}; choose from {', '.join(METHODS)}")
    return methods


def run(args) -> int:
    """The `owl3 bench latency` command."""
    if args.model is not None and not Path(args.model).is_dir():
        raise Owl3Error(f"model folder {args.model!r} does not exist; pass a checkpoint folder to --model")
    dev = parse_device(args.device)
    parse_dtype(args.dtype)
    if args.new_tokens < 2:
        raise Owl3Error("--new-tokens must be at least 2 (decode time is the gap between tokens)")
    spec = LatencySpec(
        preset=None if args.model else args.preset,
        model=args.model,
        device=str(dev),
        dtype=args.dtype,
        new_tokens=args.new_tokens,
        text_per_image=args.text_per_image,
        vision_chunk=args.vision_chunk,
        repeat=args.repeat,
        compile=args.compile,
        split_prefill={"auto": None, "on": True, "off": False}[args.split_prefill],
    )
    if args.model is None:
        preset(args.preset)  # unknown preset -> Owl3Error before any process starts
    counts, methods = parse_counts(args.images), parse_methods(args.methods)
    isolate = {"auto": None, "process": True, "none": False}[args.isolate]
    quiet = args.json
    if not quiet:
        print(HEADER, flush=True)
    rows = run_sweep(
        spec,
        methods,
        counts,
        isolate,
        args.timeout,
        None if quiet else lambda s: print(s, flush=True),
        stop_after=args.stop_after,
    )
    report = {
        "preset": spec.preset,
        "model": spec.model,
        "device": dev.type,
        "device_name": device_name(dev),
        "dtype": str(parse_dtype(args.dtype)).removeprefix("torch."),
        "new_tokens": spec.new_tokens,
        "peak_memory": CUDA_MEMORY
        if dev.type == "cuda"
        else CPU_MEMORY
        if isolate is not False
        else "process resident-set high-water mark (VmHWM), one shared process: an upper bound",
        "torch": torch.__version__,
        "date": time.strftime("%Y-%m-%d"),
        "results": rows,
    }
    if not quiet:
        for line in ratios(rows):
            print(line)
    if args.plot:
        out = plot(report, args.plot)
        if not quiet:
            print(f"plot written to {out}")
    print(json.dumps(report), flush=True)
    return 0


__all__ = ["METHODS", "LatencySpec", "measure", "plot", "ratios", "run", "run_sweep"]
