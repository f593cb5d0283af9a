"""Benchmarks run and report (tiny sizes; no speed is asserted here), and what they rely on is exact."""

import json

import numpy as np
import pytest
import torch
from PIL import Image

from owl3.bench.common import free_token_id, random_images, random_model, synthetic_prompt
from owl3.bench.concat import ConcatModel, expand_image_tokens
from owl3.cli import main
from owl3.config import preset
from owl3.inference.engine import Engine
from owl3.inference.kv_cache import KVCache
from owl3.inference.sampling import SamplingParams
from owl3.model import VisualContext, hyper
from owl3.processing import Encoding
from owl3.processing.image import global_view
from owl3.processing.pixels import images_to_pixels, presize


def _last_json(text: str) -> dict:
    return json.loads(text.strip().splitlines()[-1])


def test_bench_latency_tiny_reports_every_method(capsys, tmp_path):
    png = tmp_path / "lat.png"
    argv = [
        "bench",
        "latency",
        "--preset",
        "tiny",
        "--images",
        "1,3",
        "--new-tokens",
        "3",
        "--isolate",
        "none",
    ]
    plot = ["--plot", str(png)] if _has_matplotlib() else []
    assert main(argv + plot) == 0
    out = capsys.readouterr().out
    assert out.splitlines()[0].startswith("method")  # the table comes first
    report = _last_json(out)
    assert report["preset"] == "tiny" and report["device"] == "cpu" and report["dtype"] == "float32"
    rows = report["results"]
    assert {(r["method"], r["images"]) for r in rows} == {
        (m, n) for m in ("owl3", "official", "concat") for n in (1, 3)
    }
    t = preset("tiny").vision.n_tokens
    for r in rows:
        assert r["status"] == "ok" and r["visual_tokens"] == r["images"] * t
        assert r["ftl_s"] > 0 and r["decode_ms_per_token"] > 0 and r["peak_mem_mb"] > 0
        stages = r["ftl_stages"]  # where the FTL went: parts of it, measured inside the same request
        assert set(stages) == {"pixels_s", "vision_s", "prefill_s"} and min(stages.values()) > 0
        assert sum(stages.values()) <= r["ftl_s"] + 1e-3
    concat = {r["images"]: r["sequence_tokens"] for r in rows if r["method"] == "concat"}
    owl = {r["images"]: r["sequence_tokens"] for r in rows if r["method"] == "owl3"}
    assert concat[3] - owl[3] == 3 * (t - 1)  # concat's sequence holds every visual token
    if plot:
        assert png.read_bytes()[:4] == b"\x89PNG"


def test_bench_latency_isolated_point_and_json_only(capsys):
    argv = [
        "bench",
        "latency",
        "--preset",
        "tiny",
        "--images",
        "2",
        "--new-tokens",
        "2",
        "--methods",
        "owl3",
        "--json",
    ]
    assert main(argv) == 0
    out = capsys.readouterr().out.strip().splitlines()
    assert len(out) == 1  # --json: the JSON line alone
    (row,) = json.loads(out[0])["results"]
    assert row["status"] == "ok" and row["method"] == "owl3" and row["peak_mem_mb"] > 100  # RSS of a process


def test_bench_latency_stop_after_skips_larger_counts(capsys):
    # every point takes more than 0 s: each method runs its smallest count only, the rest are reported
    argv = ["bench", "latency", "--preset", "tiny", "--images", "1,2,3", "--new-tokens", "2"]
    assert main([*argv, "--methods", "owl3,concat", "--isolate", "none", "--stop-after", "0"]) == 0
    rows = _last_json(capsys.readouterr().out)["results"]
    status = {(r["method"], r["images"]): r["status"] for r in rows}
    assert status["owl3", 1] == "ok" and status["concat", 1] == "ok"
    for m in ("owl3", "concat"):
        assert status[m, 2].startswith("skipped (1 images took") and status[m, 3] == status[m, 2]


@pytest.mark.parametrize(
    "argv, message",
    [
        (["--methods", "owl3,llava"], "unknown method"),
        (["--images", "1,x"], "--images"),
        (["--images", "0"], "--images"),
        (["--preset", "huge"], "unknown preset"),
        (["--new-tokens", "1"], "--new-tokens"),
        (["--model", "/no/such/dir"], "does not exist"),
    ],
)
def test_bench_latency_user_errors(capsys, argv, message):
    assert main(["bench", "latency", "--isolate", "none", *argv]) == 2
    err = capsys.readouterr().err
    assert err.startswith("owl3: error:") and message in err and err.count("\n") == 1


def _has_matplotlib() -> bool:
    try:
        import matplotlib  # noqa: F401
    except ImportError:
        return False
    return True


def test_parallel_pixels_equal_the_processor_transform():
    images = random_images(5, 97, 61) + [Image.new("L", (40, 90), 128)]
    ref = torch.stack([global_view(i, 56) for i in images])
    assert torch.equal(images_to_pixels(images, 56), ref)
    assert torch.equal(torch.stack([global_view(i, 56) for i in presize(images, 56)]), ref)


@pytest.fixture(scope="module")
def tiny_model():
    return random_model(preset("tiny"), seed=3)


def test_concat_baseline_forward_is_sane(tiny_model):
    cfg = tiny_model.cfg
    image_id = free_token_id(cfg)
    ids, starts = synthetic_prompt(2, image_id, cfg.text.vocab_size, text_per_image=3)
    t = cfg.vision.n_tokens
    long_ids, long_starts = expand_image_tokens(ids, starts, t)
    assert long_ids.shape[0] == ids.shape[0] + 2 * (t - 1)
    assert long_starts == [starts[0], starts[1] + t - 1]
    assert (long_ids == image_id).sum() == 2 * t
    pixels = images_to_pixels(random_images(2, 64, 48), cfg.image_size)
    feats = tiny_model.encode_media(pixels)  # (2, T, D)
    concat = ConcatModel(tiny_model, image_id)
    visual = VisualContext.build([feats], [long_starts])
    with torch.no_grad():
        logits = concat(long_ids[None], visual=visual)  # (1, L', V)
        # the same by hand: image-token embeddings replaced by the features, a plain causal LLM
        x = tiny_model.embed(long_ids[None]).clone()
        x[0, long_ids == image_id] = feats.reshape(-1, feats.shape[-1])
        lm = tiny_model.language_model
        ref = lm.lm_head(lm.model(x, torch.arange(x.shape[1])[None]))
    assert torch.isfinite(logits).all() and logits.shape == (1, long_ids.shape[0], cfg.text.vocab_size)
    torch.testing.assert_close(logits, ref)
    # the visual features matter, and the engine's cached decode agrees with the full forward
    with torch.no_grad():
        other = concat(long_ids[None], visual=VisualContext.build([feats.flip(0)], [long_starts]))
    assert not torch.allclose(other, logits)
    engine = Engine(concat, stop_token_ids=(), pad_token_id=0, max_model_len=10_000, prefill_chunk=10_000)
    enc = Encoding(long_ids, pixels, long_starts, "")
    toks = [ev.token_id for ev in engine.generate([enc], SamplingParams(max_new_tokens=4))]
    full = torch.cat([long_ids, torch.tensor(toks)])[None]
    with torch.no_grad():
        step = concat(full, visual=VisualContext.build([feats], [long_starts]))[0, long_ids.shape[0] - 1 : -1]
    assert step.argmax(-1).tolist() == toks


def test_blocked_cross_attention_and_chunked_visual_kv_are_exact(tiny_model, monkeypatch):
    cfg = tiny_model.cfg
    ids, starts = synthetic_prompt(3, free_token_id(cfg), cfg.text.vocab_size)
    feats = tiny_model.encode_media(images_to_pixels(random_images(3, 64, 48), cfg.image_size))
    with torch.no_grad():
        ref = tiny_model(ids[None], visual=VisualContext.build([feats], [starts]))
        monkeypatch.setattr(hyper, "MASK_BUDGET", 40)  # a few queries per block
        monkeypatch.setattr(hyper, "KV_CHUNK", 7)  # visual K/V in chunks of 7 tokens
        out = tiny_model(ids[None], visual=VisualContext.build([feats], [starts]))
        monkeypatch.setattr(hyper, "REPEAT_KV_BUDGET", 0)  # query heads grouped instead of K/V repeated
        grouped = tiny_model(ids[None], visual=VisualContext.build([feats], [starts]))
    torch.testing.assert_close(out, ref, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(grouped, ref, atol=1e-5, rtol=1e-5)


def test_memory_prefix_cache_loads_into_a_fresh_cache(tiny_model):
    cache = KVCache(tiny_model.cfg.text, 1, 10, torch.float32, "cpu")
    kv = [(torch.randn(1, 2, 4, 16), torch.randn(1, 2, 4, 16)) for _ in range(tiny_model.cfg.text.n_layers)]
    cache.load_prefix(kv)
    assert cache.length == 4 and torch.equal(cache.k[1][:, :, :4], kv[1][0])


def test_bench_video_modes(tmp_path):
    from owl3.bench.video import decode_all, run_bench, write_test_video
    from owl3.processing.video import frame_indices, read_video

    path = write_test_video(tmp_path / "v.mp4", seconds=4, fps=25, width=64, height=48, gop=25)
    rows = run_bench(path, [5], ["decode-all", "exact", "keyframe"])
    assert [r["mode"] for r in rows] == ["decode-all", "exact", "keyframe"]
    assert all(r["returned"] == 5 and r["frames_per_s"] > 0 for r in rows)
    assert rows[0]["speedup_vs_decode_all"] == 1.0
    everything, n = decode_all(path, frame_indices(100, frames=5))
    assert n == 100
    exact = read_video(path, frames=5)
    assert all(np.array_equal(np.asarray(a), np.asarray(b)) for a, b in zip(exact, everything, strict=True))


def test_bench_video_cli_json(capsys, tmp_path):
    argv = ["bench", "video", "--seconds", "3", "--fps", "10", "--gop", "10", "--frames", "4", "--json"]
    assert main(argv) == 0
    report = _last_json(capsys.readouterr().out)
    assert report["video"]["frames"] == 30 and {r["mode"] for r in report["results"]} == {
        "decode-all",
        "exact",
        "keyframe",
    }
    assert main(["bench", "video", "--frames", "0"]) == 2


@pytest.mark.parametrize("budget", [1 << 24, 300])  # one block per run of queries, or many small ones
def test_split_prefill_equals_the_masked_cross_attention(monkeypatch, budget):
    # two rows: an interleaved many-image prompt, and a video-like run of consecutive image tokens with
    # left padding (positions 0) and padded visual tokens (NEVER); 7 query heads per kv head, as the 7B
    g = torch.Generator().manual_seed(0)
    t, d, n_kv, n_rep = 6, 16, 2, 7
    starts = [[3, 9, 15, 21, 27], [10, 11, 12]]
    feats = [torch.randn(len(s), t, 8, generator=g) for s in starts]
    ctx = VisualContext.build(feats, starts)
    m = ctx.n_tokens
    k, v = (torch.randn(2, n_kv, m, d, generator=g) for _ in range(2))
    q = torch.randn(2, n_kv * n_rep, 40, d, generator=g)
    positions = torch.stack(
        [torch.arange(40), torch.cat([torch.zeros(20, dtype=torch.long), torch.arange(20)])]
    )
    monkeypatch.setattr(hyper, "SPLIT_BUDGET", budget)
    monkeypatch.setattr(hyper, "QUERY_BLOCK", 16)
    with torch.no_grad():
        ctx.split_prefill = True  # the CUDA default, forced on this CPU
        split, seen = hyper.cross_attention(q, k, v, ctx, positions)
        ctx.split_prefill = False
        masked, seen_ref = hyper.cross_attention(q, k, v, ctx, positions)
    assert torch.equal(seen, seen_ref) and seen[0].sum() == 40 - 4 and seen[1].sum() == 20 - 11
    torch.testing.assert_close(
        split[seen[:, None, :].expand_as(split[..., 0])],
        masked[seen[:, None, :].expand_as(masked[..., 0])],
        atol=1e-5,
        rtol=1e-5,
    )
    blocks = hyper._split_blocks(torch.searchsorted(ctx.key_starts[0], positions[0]).tolist(), n_rep)
    assert len(blocks) > 1 and any(a > 0 and c > a for _, _, a, c in blocks)  # both parts, merged


def test_split_prefill_is_used_in_inference_and_not_in_training(tiny_model, monkeypatch):
    cfg = tiny_model.cfg
    ids, starts = synthetic_prompt(4, free_token_id(cfg), cfg.text.vocab_size)
    feats = tiny_model.encode_media(images_to_pixels(random_images(4, 64, 48), cfg.image_size))
    calls = []
    real = hyper._split_prefill
    monkeypatch.setattr(hyper, "_split_prefill", lambda *a: calls.append(1) or real(*a))
    with torch.no_grad():
        ctx = VisualContext.build([feats], [starts])
        ctx.split_prefill = True
        split = tiny_model(ids[None], visual=ctx)
    assert len(calls) == len(cfg.text.hyper_layers)
    ctx = VisualContext.build([feats.detach()], [starts])
    ctx.split_prefill = True
    masked = tiny_model(ids[None], visual=ctx)  # autograd on
    assert len(calls) == len(cfg.text.hyper_layers)  # the log-sum-exp kernels have no gradient for it
    torch.testing.assert_close(split, masked.detach(), atol=1e-5, rtol=1e-5)


def test_streamed_visual_kv_equals_features_then_layers(tiny_model, monkeypatch):
    # encode_visual_kv goes from pixels to every hyper layer's K/V a few images at a time, never holding
    # all features; it must equal encode_media + the K/V a prefill computes lazily
    cfg = tiny_model.cfg
    ids, starts = synthetic_prompt(5, free_token_id(cfg), cfg.text.vocab_size)
    pixels = images_to_pixels(random_images(5, 64, 48), cfg.image_size)
    with torch.no_grad():
        ctx = VisualContext.build([tiny_model.encode_media(pixels)], [starts])
        tiny_model(ids[None], visual=ctx)  # fills ctx.kv, one entry per hyper layer
        monkeypatch.setattr(hyper, "KV_CHUNK", 7)  # K/V in chunks that cut through images
        streamed = tiny_model.encode_visual_kv(pixels, starts, chunk_size=2)
    assert sorted(streamed) == sorted(ctx.kv) and len(streamed) == len(cfg.text.hyper_layers)
    for i, (k, v) in streamed.items():
        torch.testing.assert_close(k, ctx.kv[i][0], atol=1e-6, rtol=1e-5)
        torch.testing.assert_close(v, ctx.kv[i][1], atol=1e-6, rtol=1e-5)


def test_isolated_point_reports_errors_and_timeouts_instead_of_crashing():
    from owl3.bench.latency import LatencySpec, _run_isolated

    bad = _run_isolated(LatencySpec(preset="no-such-preset"), "owl3", 1, timeout=60)
    assert bad["status"].startswith("error: Owl3Error: unknown preset") and bad["ftl_s"] is None
    slow = _run_isolated(LatencySpec(preset="tiny", new_tokens=2), "owl3", 1, timeout=0.001)
    assert slow["status"] == "timeout"
    ok = _run_isolated(LatencySpec(preset="tiny", new_tokens=2), "owl3", 1, timeout=120)
    assert ok["status"] == "ok" and ok["peak_mem_mb"] > 100  # the child's own RSS, model included


def test_bench_serve_compares_batching_with_one_at_a_time_over_http():
    # two real servers (batch 2, then 1) on free local ports, two streaming clients each; both settings
    # answer the same prompts greedily, so they generate the same number of tokens
    import json
    import subprocess
    import sys

    cmd = [sys.executable, "-m", "owl3.cli", "bench", "serve", "--preset", "tiny", "--clients", "2",
           "--requests", "1", "--new-tokens", "4", "--max-num-seqs", "2", "--followup-frames", "4",
           "--json"]  # fmt: skip
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-2000:]
    report = json.loads(proc.stdout.strip().splitlines()[-1])
    assert report["preset"] == "tiny" and report["device"]
    rows = report["results"]
    assert [(r["clients"], r["max_num_seqs"]) for r in rows] == [(2, 2), (2, 1)]
    assert rows[0]["tokens"] == rows[1]["tokens"] > 0 and all(r["requests"] == 2 for r in rows)
    for r in rows:
        assert r["throughput_tok_s"] > 0 and 0 < r["ttft_p50_s"] <= r["ttft_p99_s"]
        assert r["itl_p50_ms"] <= r["itl_p99_ms"]
    follow = report["followup"]
    assert follow["frames"] == 4 and follow["first_ttft_s"] > 0 and follow["followup_ttft_s"] > 0


def test_bench_serve_user_errors_are_one_line(capsys):
    from owl3.cli import main

    assert main(["bench", "serve", "--clients", "0"]) == 2
    assert capsys.readouterr().err.count("\n") == 1
