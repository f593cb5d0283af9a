"""The training loop end to end on CPU: a tiny model overfits, interrupt + resume reproduces the curve,
checkpoints load with owl3.load, bad data is reported or refused, the CLI and YAML recipes work."""

from __future__ import annotations

import json
import time

import pytest
import torch

import owl3
from owl3 import Owl3Error
from owl3.cli import main
from owl3.training import TrainConfig, train
from owl3.training.metrics import read_metrics
from owl3.training.state import list_checkpoints
from tests.train_helpers import FIXTURE, base_options


def test_tiny_model_overfits_tiny_dataset_fast(tmp_path):
    t0 = time.perf_counter()
    opts = base_options(tmp_path, batch_size=6, max_steps=60, lr=3e-3, min_lr=3e-4, warmup=0.0, plot=True)
    seen = []
    result = train(TrainConfig.from_dict(opts), on_step=lambda record, model: seen.append(record["step"]))
    elapsed = time.perf_counter() - t0
    assert seen == list(range(1, 61))
    assert result.step == 60 and not result.interrupted
    first, last = result.losses[0], result.losses[-1]
    assert last <= 0.1 * first, (first, last)  # the loss falls by >= 90 %
    assert elapsed < 60
    out = tmp_path / "out"
    assert (out / "loss.png").stat().st_size > 1000
    rows = read_metrics(out / "metrics.jsonl")
    assert [r["step"] for r in rows] == list(range(1, 61))
    assert {"loss", "lr", "grad_norm", "tokens", "target_tokens", "tokens_per_s", "epoch"} <= set(rows[0])
    # the output is an official-layout checkpoint that owl3 loads and runs
    pipe = owl3.load(out)
    assert (
        pipe.chat("What is this?", images=[FIXTURE / "images" / "one.png"], max_new_tokens=8) == "A red cat."
    )
    assert json.loads((out / "config.json").read_text())["model_type"] == "mplugowl3"


@pytest.mark.parametrize("stage", ["sft", "lora"])
def test_interrupt_and_resume_reproduces_the_uninterrupted_curve(tmp_path, stage):
    if stage == "lora":
        pytest.importorskip("peft")
    kw = dict(stage=stage, max_steps=6, lr=2e-3, crop_prob=0.5, lora_r=4)
    full = train(TrainConfig.from_dict(base_options(tmp_path / "a", **kw)))
    first = train(TrainConfig.from_dict(base_options(tmp_path / "b", stop_after=3, **kw)))
    assert first.interrupted and first.step == 3
    out = tmp_path / "b" / "out"
    assert [s for s, _ in list_checkpoints(out)] == [3]
    assert not (out / "config.json").exists()  # no final model yet
    rest = train(TrainConfig.from_dict(base_options(tmp_path / "b", resume=True, **kw)))
    assert rest.step == 6 and len(rest.losses) == 3
    assert first.losses + rest.losses == pytest.approx(full.losses, rel=1e-6)
    curve = [r["loss"] for r in read_metrics(out / "metrics.jsonl")]
    assert curve == pytest.approx(full.losses, rel=1e-6)
    a = owl3.load(tmp_path / "a" / "out").model.state_dict()
    b = owl3.load(out).model.state_dict()
    for n in a:
        torch.testing.assert_close(b[n], a[n], atol=1e-6, rtol=1e-5)


def test_checkpoints_are_official_layout_and_pruned(tmp_path):
    train(TrainConfig.from_dict(base_options(tmp_path, max_steps=4, save_every=1, save_total_limit=2)))
    out = tmp_path / "out"
    steps = list_checkpoints(out)
    assert [s for s, _ in steps] == [3, 4]
    ck = steps[-1][1]
    names = {p.name for p in ck.iterdir()}
    assert {
        "config.json",
        "model.safetensors",
        "tokenizer.json",
        "optimizer.pt",
        "scheduler.pt",
        "trainer_state.json",
        "rng-rank0.pt",
    } <= names
    assert not list((out / "checkpoints").glob("*.tmp"))
    ref = owl3.load(out).model.state_dict()
    got = owl3.load(ck).model.state_dict()  # the last checkpoint holds the final weights
    assert all(torch.equal(ref[n], got[n]) for n in ref)
    assert json.loads((ck / "trainer_state.json").read_text())["step"] == 4


def test_bad_data_is_skipped_or_refused_with_its_line(tmp_path):
    opts = base_options(tmp_path, max_steps=1)
    bad = tmp_path / "bad.jsonl"
    rec = {
        "messages": [{"role": "user", "content": "<image><image>"}, {"role": "assistant", "content": "x"}],
        "images": ["one.png"],
    }
    long = {"messages": [{"role": "user", "content": "word " * 500}, {"role": "assistant", "content": "x"}]}
    bad.write_text(json.dumps(rec) + "\n" + json.dumps(long) + "\n")
    opts["data"] = opts["data"] + [str(bad)]
    with pytest.raises(Owl3Error, match=rf"{bad}:1: tags do not match media"):
        train(TrainConfig.from_dict(opts | {"on_bad": "error"}))
    train(TrainConfig.from_dict(opts | {"seq_len": 400, "max_steps": 4, "batch_size": 2}))
    report = (tmp_path / "out" / "bad_samples.txt").read_text()
    assert f"{bad}:1: tags do not match media" in report
    assert f"{bad}:2: over-long" in report


def test_cli_with_yaml_recipe_and_flag_overrides(tmp_path, capsys):
    pytest.importorskip("yaml")
    import yaml

    opts = base_options(tmp_path, max_steps=50)
    recipe = tmp_path / "recipe.yaml"
    recipe.write_text(yaml.safe_dump(opts))
    assert main(["train", "--config", str(recipe), "--max-steps", "2", "--log-every", "1"]) == 0
    err = capsys.readouterr().err
    assert "step 2/2 | loss" in err and "tok/s" in err
    saved = yaml.safe_load((tmp_path / "out" / "train_config.yaml").read_text())
    assert saved["max_steps"] == 2 and saved["stage"] == "sft" and saved["lr"] == 1e-3
    # user errors: one line, exit 2
    assert main(["train", "--config", str(recipe), "--stage", "sft", "--warmup", "2"]) == 2
    assert "warmup" in capsys.readouterr().err
    assert (
        main(["train", "--model", str(FIXTURE), "--data", "nope.jsonl", "--output", str(tmp_path / "x")]) == 2
    )
    assert "nope.jsonl" in capsys.readouterr().err


def test_bf16_mixed_precision_and_gradient_checkpointing_run(tmp_path):
    opts = base_options(tmp_path, max_steps=2, bf16=True, gradient_checkpointing=True, stage="pretrain")
    result = train(TrainConfig.from_dict(opts))
    assert all(x == x for x in result.losses)  # finite
    from safetensors import safe_open

    with safe_open(tmp_path / "out" / "model.safetensors", "pt") as f:  # --bf16 saves bf16 by default
        assert {f.get_slice(n).get_dtype() for n in f.keys()} == {"BF16"}
    owl3.load(tmp_path / "out")


def test_python_api_keywords_and_stage_defaults(tmp_path):
    cfg = TrainConfig.from_dict(base_options(tmp_path, stage="pretrain", lr=None)).resolved()
    assert (cfg.lr, cfg.min_lr, cfg.seq_len) == (1e-3, 1e-5, 768)
    with pytest.raises(Owl3Error, match="--max-steps or --epochs"):
        TrainConfig.from_dict(base_options(tmp_path, max_steps=2, epochs=1)).resolved()
    with pytest.raises(Owl3Error, match="unknown training option"):
        TrainConfig.from_dict({"model": "m", "data": "d", "output": "o", "learning_rate": 1})


def test_length_split_pieces_hold_their_rows_and_train_the_same_steps(tmp_path):
    from owl3.processing import Processor
    from owl3.training import SampleEncoder, collate, read_data
    from owl3.training.encode import split_by_length
    from tests.train_helpers import IMAGES, write_data

    records, _ = read_data(list(map(str, write_data(tmp_path / "d"))), str(IMAGES))
    processor = Processor.from_dir(FIXTURE, 56)
    enc = SampleEncoder(processor, seq_len=4096, frames=5, crop_prob=0.0, seed=0)
    samples = [enc(r) for r in records]
    batch = collate(samples, processor.pad_token_id)
    pieces = split_by_length(batch, 3)
    assert len(pieces) == 3 and sum(len(p) for p in pieces) == len(batch)
    widths = [p.input_ids.shape[1] for p in pieces]
    assert widths == sorted(widths) and widths[-1] == batch.input_ids.shape[1] and widths[0] < widths[-1]
    by_length = {}
    for p in pieces:
        assert p.input_ids.shape[1] == int(p.lengths.max())  # each padded only to its own longest row
        at = 0
        for i in range(len(p)):
            n = int(p.lengths[i])
            images = p.pixel_values[at : at + p.n_media[i]] if p.n_media[i] else None
            at += p.n_media[i]
            by_length[tuple(p.input_ids[i, :n].tolist())] = (p.labels[i, :n], images, p.media_starts[i])
    for s in samples:  # every row with its labels, its own pictures and image positions
        labels, images, starts = by_length[tuple(s.input_ids.tolist())]
        assert torch.equal(labels, s.labels) and starts == s.media_starts
        assert (images is None) == (s.pixel_values is None)
        assert images is None or torch.equal(images, s.pixel_values)
    assert split_by_length(batch, 1) == [batch] and len(split_by_length(batch, 99)) == len(batch)
    # training: the same losses and weights as the unsplit batches (rows never see each other)
    kw = dict(batch_size=6, max_steps=4, lr=2e-3, crop_prob=0.0)
    whole = train(TrainConfig.from_dict(base_options(tmp_path / "a", **kw)))
    split = train(TrainConfig.from_dict(base_options(tmp_path / "b", length_split=3, **kw)))
    assert split.losses == pytest.approx(whole.losses, rel=1e-5)
    a = owl3.load(tmp_path / "a" / "out").model.state_dict()
    b = owl3.load(tmp_path / "b" / "out").model.state_dict()
    for n in a:  # Adam's first steps move a near-zero gradient's weight by ~lr whatever its rounding
        torch.testing.assert_close(b[n], a[n], atol=1e-4, rtol=1e-4)
