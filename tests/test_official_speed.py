"""benchmarks/official_speed.py and its driver: the owl3 side and the measuring tools (the official code
itself is not here; the comparison runs by hand, docs/performance.md)."""

import importlib.util
import sys
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from owl3.bench.common import random_model
from owl3.bench.serve import preset_checkpoint
from owl3.config import preset

BENCH = Path(__file__).resolve().parent.parent / "benchmarks"


def _load(name: str):
    spec = importlib.util.spec_from_file_location(f"_bench_{name}", BENCH / f"{name}.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def test_module_times_count_the_vision_layers_owl3_runs():
    driver = _load("official_driver")
    cfg = preset("tiny")
    model = random_model(cfg)
    pixels = torch.rand(3, 3, cfg.image_size, cfg.image_size)
    secs, calls = driver.module_times(model, lambda: model.encode_media(pixels))
    # hidden_states[-2]: the last encoder layer never runs, and there is no post_layernorm or head
    assert calls["vision: encoder layers"] == cfg.vision.n_layers - 1
    assert calls["vision: patch + position embedding"] == 1 and calls["projector"] == 1
    assert "vision: pooling head" not in calls and "text: decoder layers" not in calls
    assert all(s >= 0 for s in secs.values())
    # the hooks are gone afterwards
    _, again = driver.module_times(model, lambda: None)
    assert again == {}


def test_owl3_side_makes_exactly_the_asked_tokens_and_the_official_inputs(tmp_path):
    bench = _load("official_speed")
    ckpt = preset_checkpoint("tiny", tmp_path / "ckpt")
    side = bench.Owl3Side(ckpt)
    enc, path = bench.make_inputs(side, 3, seed=0, folder=tmp_path)
    got = load_file(str(path))
    n = enc.input_ids.shape[0]
    assert got["input_ids"].shape == (1, n) and torch.equal(got["input_ids"][0], enc.input_ids)
    assert torch.equal(got["pixel_values"], enc.pixel_values)
    # official media_offset: column 1 counts the images whose token lies strictly before the position
    want = torch.tensor([sum(s < p for s in enc.media_starts) for p in range(n)])
    assert torch.equal(got["media_offset"][0, :, 1], want)
    assert torch.equal(got["media_offset"][0, :, 0], torch.zeros(n, dtype=torch.long))
    run = side.run(enc, 5)  # no stop ids: never ends early
    assert len(run["tokens"]) == 5 and run["decode_ms"] > 0
    assert 0 < run["vision_s"] < run["sampled_s"] <= run["ftl_s"]
    # greedy: the same request gives the same tokens again
    assert side.run(enc, 5)["tokens"] == run["tokens"]


def test_first_divergence():
    bench = _load("official_speed")
    assert bench.first_divergence([1, 2, 3], [1, 2, 3]) is None
    assert bench.first_divergence([1, 2, 3], [1, 5, 3]) == 1
    assert bench.first_divergence([1, 2], [1, 2, 3]) == 2


def test_refuses_a_missing_official_environment(tmp_path, monkeypatch, capsys):
    bench = _load("official_speed")
    argv = [
        "official_speed.py",
        "--official-python",
        str(tmp_path / "nope"),
        "--official-code",
        str(tmp_path),
    ]
    monkeypatch.setattr(sys, "argv", argv)
    with pytest.raises(SystemExit) as e:
        bench.main()
    assert e.value.code == 2
    assert "does not exist" in capsys.readouterr().err
