"""Text targets on a phrase of the prompt ("text") and in a named decoder layer ("layer"), and the demo
world's label targets (`Mix.copy_label`): the answer and the tokens after image X made to carry X."""

from __future__ import annotations

import json
from dataclasses import replace

import pytest
import torch

from owl3.checkpoint import load_model
from owl3.demo.data import Mix, write_dataset
from owl3.errors import Owl3Error
from owl3.processing import Processor
from owl3.training import SampleEncoder, TrainConfig, collate, read_data, train
from owl3.training.attention import Readout, text_attention_loss
from owl3.training.data import IMAGE
from owl3.training.encode import Sample, Skipped, phrase_end
from owl3.training.metrics import read_metrics
from owl3.training.step import TrainStep
from tests.train_helpers import FIXTURE, IMAGES, base_options, reasons_by_line, write_rows

LIST = {"role": "user", "content": "Image 1: <image> Image 12: <image>. In Image 1, which is bigger?"}
ANSWER = "The left one is bigger."


def _record(attend) -> dict:
    return {
        "messages": [LIST, {"role": "assistant", "content": ANSWER}],
        "images": ["m1.png", "m2.png"],
        "attend": attend,
    }


def test_phrase_end_finds_the_last_whole_occurrence():
    pieces = ["Image", " 1", ":", "<|image|>", " Image", " 12", ":", ".", " In", " Image", " 1", ","]
    assert phrase_end("Image 1", pieces) == 10  # the question's, not the label's
    assert phrase_end("Image 1", pieces[:10]) == 1  # "Image 1" inside "Image 12" does not count
    assert phrase_end("Image 12", pieces) == 5
    digits = ["Image", " 1", "2", ":", " In", " Image", " 1", "2", "."]  # a tokenizer that splits digits
    assert phrase_end("Image 12", digits) == 7
    with pytest.raises(ValueError):
        phrase_end("Image 1", digits)
    with pytest.raises(ValueError, match="'Image 2' does not end a token"):
        phrase_end("Image 2", pieces)


def test_phrase_and_layer_targets_are_read_checked_and_placed(tmp_path):
    rows = [
        _record([
            {"text": "Image 1", "after": "The left one is", "layer": 0},
            {"image": 1, "text": "Image 12", "query": "after_image", "layer": 1},
            {"image": 0, "next_tokens": 2, "after": "The left one is", "layer": 2},
            {"image": 0, "next_tokens": 2, "after": "The left one is"},
            {"text": "Image 1", "after": "The left one is", "heads": [3, 1]},
        ]),
        _record([{"text": "Image 1", "after": "", "heads": [1, 1]}]),
        _record([{"image": 0, "box": [0, 0, 1, 1], "after": "", "heads": [0]}]),
        _record([{"text": "", "after": ""}]),
        _record([{"text": "Image 1", "after": "", "layer": -1}]),
        _record([{"image": 0, "box": [0, 0, 1, 1], "after": "", "layer": 0}]),
        _record([{"text": "Image 1", "after": "The right"}]),
        _record([{"text": "Image 7", "after": ""}]),  # not in the prompt: skipped when encoded
    ]  # fmt: skip
    records, problems = read_data([write_rows(tmp_path / "t.jsonl", rows)], media_root=str(IMAGES))
    assert [r.line for r in records] == [1, 8]
    why = reasons_by_line(problems)
    assert "heads names a head twice" in why[2]
    assert 'heads needs a text target ("next_tokens" or "text")' in why[3]
    why = {line - 2: reason for line, reason in why.items() if line > 3}  # the checks below as they were
    assert "text must be a non-empty phrase" in why[2]
    assert "layer must be a decoder layer index >= 0, got -1" in why[3]
    assert 'layer needs a text target ("next_tokens" or "text")' in why[4]
    assert "start of answer 0" in why[5]
    processor = Processor.from_dir(FIXTURE, 56)
    enc = SampleEncoder(processor, seq_len=4096, frames=5, crop_prob=0.0, seed=0, grid=4)
    sample, missing = enc(records[0]), enc(records[1])
    assert isinstance(missing, Skipped) and "'Image 7' does not end a token" in missing.reason
    assert isinstance(sample, Sample) and sample.attend == []
    ids = sample.input_ids.tolist()
    piece = lambda i: processor.tokenizer.decode([ids[i]])  # noqa: E731
    (plain,) = sample.attend_text  # no layer: the training's text layer, as before
    (l0, q0, (t0,), h0), (l1, q1, (t1,), _), (l2, q2, t2, _), (l3, q3, (t3,), h3) = sample.attend_layer
    assert (l0, l1, l2, l3) == (0, 1, 2, None) and h0 == () and h3 == (3, 1) and (q3, t3) == (q0, t0)
    assert q0 == q2 == plain[0] and t2 == plain[1]  # the answer's query; the tokens after image 0
    around = lambda t: processor.tokenizer.decode(ids[t - 4 : t + 2])  # noqa: E731
    assert piece(t0) == " 1" and around(t0).endswith("In Image 1,")  # the question's
    assert q1 == sample.media_starts[1] + 1 and piece(t1).endswith("2") and around(t1).endswith("Image 12:")
    batch = collate([sample, sample], processor.pad_token_id)
    assert batch.attend_layer == [sample.attend_layer] * 2


def test_each_layer_gets_its_own_targets_loss(tmp_path):
    model = load_model(FIXTURE)
    step = TrainStep(model, attention_weight=1.0)  # the tiny fixture: text layer 1
    layered = [[(0, 5, [2], ()), (1, 6, [3], ())], [(3, 4, [0], (1,)), (None, 7, [1], ())]]
    by_layer = step.text_targets([[(5, [1])], []], layered, 2)
    assert by_layer == {1: [[(5, [1]), (6, [3])], [(7, [1])]], 0: [[(5, [2])], []], 3: [[], [(4, [0], (1,))]]}
    with pytest.raises(Owl3Error, match="names layer 4; the model has 0..3"):
        step.text_targets([], [[(4, 1, [0], ())]], 1)
    with pytest.raises(Owl3Error, match=r"names heads \[9\]; the model has 0..3"):
        step.text_targets([], [[(0, 1, [0], (9,))]], 1)
    # the loss of a forward is the answer loss plus each layer's text_attention_loss on its own q and k
    processor = Processor.from_dir(FIXTURE, 56)
    enc = SampleEncoder(processor, seq_len=4096, frames=5, crop_prob=0.0, seed=0, grid=4)
    records, _ = read_data([write_rows(tmp_path / "a.jsonl", [_record([
        {"text": "Image 1", "after": "The left one is", "layer": 0},
        {"image": 1, "text": "Image 12", "query": "after_image", "layer": 2},
    ])])], media_root=str(IMAGES))  # fmt: skip
    b = collate([enc(records[0])], processor.pad_token_id)
    args = (b.input_ids, b.labels, b.pixel_values, b.n_media, b.media_starts, b.attend, b.attend_text)
    with torch.no_grad():
        plain = float(step(*args))
        total = float(step(*args, b.attend_layer))
        # each layer's own rotated q and k, read by hooks around a plain forward of the same batch
        layers = step.text_targets(b.attend_text, b.attend_layer, 1)
        decoder = model.language_model.model
        taps = Readout(decoder, {layer: {"rotate"} for layer in layers})
        x = model.embed(b.input_ids)
        positions = torch.arange(b.input_ids.shape[1])[None]
        visual = step.visual(b.pixel_values, b.n_media, b.media_starts, 1, x.device)
        with taps.capture():
            decoder(x, positions, None, None, visual)
        parts = [float(text_attention_loss(taps.queries(i), taps.keys(i), t)) for i, t in layers.items()]
    assert sorted(layers) == [0, 2] and all(p > 0 for p in parts)
    assert total == pytest.approx(plain + sum(parts), rel=1e-5)
    assert step.attention_count == 2


def test_a_head_target_averages_over_its_heads_only():
    torch.manual_seed(0)
    q, k = torch.randn(1, 4, 7, 8), torch.randn(1, 2, 7, 8)
    per_head = torch.stack(
        [text_attention_loss(q[:, h : h + 1], k[:, h // 2 : h // 2 + 1], [[(6, [1, 2])]]) for h in range(4)]
    )  # one head at a time: head h reads kv head h // 2
    assert torch.allclose(text_attention_loss(q, k, [[(6, [1, 2])]]), per_head.mean())
    assert torch.allclose(text_attention_loss(q, k, [[(6, [1, 2], (3,))]]), per_head[3])
    both = text_attention_loss(q, k, [[(6, [1, 2], (0, 2)), (5, [0])]])
    assert torch.allclose(both, (per_head[0] + per_head[2]) / 2 + text_attention_loss(q, k, [[(5, [0])]]))


def test_training_with_layer_targets_moves_that_layers_attention(tmp_path):
    attend = [{"text": "Image 1", "after": "The left one is", "layer": 0}]
    f = tmp_path / "a.jsonl"
    f.write_text((json.dumps(_record(attend)) + "\n") * 8)
    opts = base_options(tmp_path / "t", data=[str(f)], max_steps=25, lr=3e-3, warmup=0.0)
    opts["attention_loss_weight"] = 4.0
    opts["media_root"] = str(IMAGES)
    train(TrainConfig.from_dict(opts))
    att = [r["attention_loss"] for r in read_metrics(tmp_path / "t" / "out" / "metrics.jsonl")]
    assert att[0] > 2.0 and att[-1] < 0.5 * att[0], att  # one of ~40 tokens: -log(1/40) = 3.7 at first


def test_demo_label_targets_name_image_x_and_leave_the_rows_alone(tmp_path):
    plain = Mix(single=0.0, multi=0.7, which=0.3, video=0.0, n_min=2, n_max=6, window=0.5, bind=True, turns=2)
    copy = replace(plain, copy_label=True, copy_heads=(3,))
    a = write_dataset(tmp_path / "plain", 40, mix=plain, pool=100, name="rows")
    b = write_dataset(tmp_path / "copy", 40, mix=copy, pool=100, name="rows")
    rows_a = [json.loads(line) for line in a.read_text().splitlines()]
    rows_b = [json.loads(line) for line in b.read_text().splitlines()]
    strip = lambda r: {**r, "attend": [t for t in r.get("attend", []) if "text" not in t]}  # noqa: E731
    assert [strip(r) for r in rows_b] == [strip(r) for r in rows_a]  # the same draws, the same other targets
    processor = Processor.from_dir("owl3/assets/demo", 84)
    enc = SampleEncoder(processor, seq_len=4096, frames=8, crop_prob=0.0, seed=0, grid=3)
    records, problems = read_data([b])
    assert not problems
    n_label = n_question = 0
    for record in records:
        prompt = record.messages[0]["content"]
        sample = enc(record)
        assert isinstance(sample, Sample), sample
        ids = sample.input_ids.tolist()
        texts = [t for t in record.attend if t.text]
        labels = [t for t in texts if t.query == "after_image"]
        assert len(labels) == 1
        assert all(t.heads == (3,) for t in texts)
        for t in labels:
            assert t.layer == 0 and prompt.split(IMAGE)[t.image].rstrip().endswith(t.text + ":")
            n_label += 1
        for t in texts:
            if t.query != "after_image":
                assert t.layer == 1
                asked = record.messages[2 * t.turn]["content"]
                assert f"In {t.text}," in asked
                n_question += 1
        # every label target and question target points at a number token
        for _, _, (token,), _ in sample.attend_layer:
            assert processor.tokenizer.decode([ids[token]]).strip().isdigit()
    assert n_label > 10 and n_question > 10


def test_a_layer_the_model_lacks_is_refused_before_training(tmp_path, capsys):
    from owl3.cli import main

    rows = [_record([{"text": "Image 1", "after": "", "layer": 4}])] * 8
    f = write_rows(tmp_path / "a.jsonl", rows)
    out = str(tmp_path / "x")
    code = main(["train", "--model", str(FIXTURE), "--data", str(f), "--output", out, "--media-root",
                 str(IMAGES), "--attention-loss-weight", "1", "--max-steps", "1"])  # fmt: skip
    assert code == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert err[-1].endswith("a.jsonl:1: attend layer 4, but the model has decoder layers 0..3"), err[-1]
    assert not (tmp_path / "x" / "checkpoints").exists()
    f = write_rows(tmp_path / "b.jsonl", [_record([{"text": "Image 1", "after": "", "heads": [4]}])] * 8)
    code = main(["train", "--model", str(FIXTURE), "--data", str(f), "--output", out, "--media-root",
                 str(IMAGES), "--attention-loss-weight", "1", "--max-steps", "1"])  # fmt: skip
    assert code == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert err[-1].endswith("b.jsonl:1: attend head 4, but the model has attention heads 0..3"), err[-1]
