"""Training data: both readers with line numbers, every kind of bad sample, label masks on the official
template, the cropping policy, videos, and the right-padded batch."""

from __future__ import annotations

import json
from pathlib import Path

import av
import numpy as np
import pytest
import torch

from owl3.processing import Processor
from owl3.training import IGNORE, SampleEncoder, collate, read_data
from owl3.training.encode import Skipped
from tests.train_helpers import (
    FIXTURE,
    IMAGES,
    llava_records,
    reasons_by_line,
    swift_records,
    write_data,
    write_rows,
)


@pytest.fixture(scope="module")
def processor() -> Processor:
    return Processor.from_dir(FIXTURE, 56)


def _encoder(processor, **kw) -> SampleEncoder:
    opts = dict(seq_len=4096, frames=8, crop_prob=0.0, seed=0) | kw
    return SampleEncoder(processor, **opts)


def _learned(processor, sample) -> str:
    ids = [
        i for i, lab in zip(sample.input_ids.tolist(), sample.labels.tolist(), strict=True) if lab != IGNORE
    ]
    return processor.tokenizer.decode(ids, skip_special_tokens=False)


def test_both_formats_with_line_numbers(tmp_path):
    swift, llava = write_data(tmp_path)
    records, problems = read_data([swift, llava], media_root=str(IMAGES))
    assert problems == []
    assert [r.where for r in records[:4]] == [f"{swift}:{i}" for i in (1, 2, 3, 4)]
    # pretty-printed LLaVA list: each record's line is where its "{" stands
    lines = llava.read_text().splitlines()
    starts = [i + 1 for i, line in enumerate(lines) if line == "  {"]
    assert [r.line for r in records[4:]] == starts
    first = records[4]
    assert [m["role"] for m in first.messages] == ["user", "assistant"]
    assert first.messages[0]["content"] == "<|image|>\nDescribe the picture."
    assert first.images == (str(IMAGES / "wide.png"),)
    assert records[3].videos == (tuple(str(IMAGES / f"f{i}.png") for i in range(5)),)
    assert len(records[1].images) == 2 and records[2].images == ()


def test_bad_samples_are_reported_with_their_line(tmp_path):
    good = swift_records()[0]
    bad = [
        good,
        {"messages": good["messages"], "images": ["nope.png"]},  # missing image
        {"messages": good["messages"], "images": ["one.png", "m1.png"]},  # 1 tag, 2 images
        {"messages": [{"role": "user", "content": "<video>"}, {"role": "assistant", "content": "x"}]},
        {"messages": [{"role": "user", "content": "hi <|im_end|>"}, {"role": "assistant", "content": "x"}]},
        {"messages": [{"role": "user", "content": "hi"}]},  # nothing to learn
        {"messages": good["messages"], "images": ["https://example.com/a.png"]},
        {"text": "no conversation"},
        {
            "messages": [{"role": "user", "content": "hi"}, {"role": "assistant", "content": "<image>"}],
            "images": ["one.png"],
        },
    ]
    f = write_rows(tmp_path / "bad.jsonl", bad, tail="{not json\n")
    records, problems = read_data([f], media_root=str(IMAGES))
    assert [r.line for r in records] == [1]
    by_line = reasons_by_line(problems)
    assert sorted(by_line) == list(range(2, 11))
    assert "image not found" in by_line[2]
    assert "1 <image> tag(s) for 2 image(s)" in by_line[3]
    assert "1 <video> tag(s) for 0 video(s)" in by_line[4]
    assert "<|im_end|>" in by_line[5]
    assert "no assistant answer" in by_line[6]
    assert "not a local file" in by_line[7]
    assert "neither" in by_line[8]
    assert "assistant answer" in by_line[9]
    assert "not valid JSON" in by_line[10]
    assert all(p.where.startswith(f"{f}:") for p in problems)


def test_labels_cover_answers_and_their_end_tokens_only(processor, tmp_path):
    swift, _ = write_data(tmp_path)
    records, _ = read_data([swift], media_root=str(IMAGES))
    enc = _encoder(processor)
    multi_turn = enc(records[2])
    assert (
        _learned(processor, multi_turn) == "Hi there!<|im_end|><|endoftext|>Goodbye.<|im_end|><|endoftext|>"
    )
    text = processor.tokenizer.decode(multi_turn.input_ids.tolist(), skip_special_tokens=False)
    assert text.endswith("Goodbye.<|im_end|><|endoftext|>")  # no trailing generation header
    image = enc(records[0])
    assert _learned(processor, image) == "A red cat.<|im_end|><|endoftext|>"
    # the ids are exactly the inference processor's (minus the generation header it appends)
    ref = processor(list(records[0].messages), list(records[0].images), cut=False)
    n = image.input_ids.shape[0]
    assert torch.equal(ref.input_ids[:n], image.input_ids)
    assert ref.media_starts == image.media_starts
    assert torch.equal(ref.pixel_values, image.pixel_values)
    # no label on an image token, nor on anything before the first answer
    assert (image.labels[image.input_ids == processor.image_token_id] == IGNORE).all()


def test_crop_only_lone_images_with_probability(processor, tmp_path):
    swift, llava = write_data(tmp_path)
    records, _ = read_data([swift, llava], media_root=str(IMAGES))
    lone, two, video, wide = records[0], records[1], records[3], records[4]
    always = _encoder(processor, crop_prob=1.0)
    assert always(wide).pixel_values.shape[0] == 4  # 1x3 grid + global view
    assert "Cut to 1 rows 3 columns" in processor.tokenizer.decode(always(wide).input_ids.tolist())
    assert always(two).pixel_values.shape[0] == 2  # several images: never cropped
    assert always(video).pixel_values.shape[0] == 5  # video: never cropped
    assert _encoder(processor, crop_prob=0.0)(wide).pixel_values.shape[0] == 1
    half = _encoder(processor, crop_prob=0.5, seed=3)
    picks = [half.crop(lone, epoch, i) for epoch in range(4) for i in range(100)]
    assert 0.4 < np.mean(picks) < 0.6
    assert picks == [half.crop(lone, epoch, i) for epoch in range(4) for i in range(100)]  # deterministic


def test_over_long_and_undecodable_samples_are_skipped(processor, tmp_path):
    swift, _ = write_data(tmp_path)
    broken = tmp_path / "broken.png"
    broken.write_bytes(b"not a png")
    f = tmp_path / "more.jsonl"
    rec = swift_records()[0] | {"images": [str(broken)]}
    f.write_text(json.dumps(rec) + "\n")
    records, _ = read_data([swift, f], media_root=str(IMAGES))
    short = _encoder(processor, seq_len=20)(records[2])
    assert isinstance(short, Skipped) and "over-long" in short.reason and short.where.endswith(":3")
    bad = _encoder(processor)(records[-1])
    assert isinstance(bad, Skipped) and "cannot read image" in bad.reason and bad.where == f"{f}:1"


def _write_video(path: Path, n: int = 20) -> Path:
    with av.open(str(path), "w") as out:
        stream = out.add_stream("mpeg4", rate=10)
        stream.width, stream.height, stream.pix_fmt = 32, 32, "yuv420p"
        for i in range(n):
            img = np.full((32, 32, 3), i * 10, np.uint8)
            out.mux(stream.encode(av.VideoFrame.from_ndarray(img, format="rgb24")))
        out.mux(stream.encode())
    return path


def test_videos_from_a_file_and_a_frame_folder(processor, tmp_path):
    _write_video(tmp_path / "clip.mp4")
    frames = tmp_path / "frames"
    frames.mkdir()
    for i in range(5):
        (frames / f"{i:03d}.png").write_bytes((IMAGES / f"f{i}.png").read_bytes())
    msgs = [{"role": "user", "content": "<video>Q"}, {"role": "assistant", "content": "A"}]
    f = tmp_path / "v.jsonl"
    f.write_text(
        json.dumps({"messages": msgs, "videos": ["clip.mp4"]})
        + "\n"
        + json.dumps({"messages": msgs, "videos": ["frames"]})
        + "\n"
    )
    records, problems = read_data([f])
    assert problems == []
    enc = _encoder(processor, frames=4)
    assert enc(records[0]).pixel_values.shape[0] == 4
    assert enc(records[1]).pixel_values.shape[0] == 4


def test_collate_right_pads_and_keeps_media_in_row_order(processor, tmp_path):
    swift, _ = write_data(tmp_path)
    records, _ = read_data([swift], media_root=str(IMAGES))
    enc = _encoder(processor)
    samples = [enc(records[2]), enc(records[1]), Skipped("x:1", "bad")]
    batch = collate(samples, processor.pad_token_id)
    assert len(batch) == 2 and batch.skipped[0].where == "x:1"
    n0 = samples[0].input_ids.shape[0]
    assert batch.input_ids.shape[1] == max(n0, samples[1].input_ids.shape[0])
    assert torch.equal(batch.input_ids[0, :n0], samples[0].input_ids)
    assert (batch.labels[0, n0:] == IGNORE).all() and (
        batch.input_ids[0, n0:] == processor.pad_token_id
    ).all()
    assert batch.n_media == [0, 2] and batch.media_starts[1] == samples[1].media_starts
    assert torch.equal(batch.pixel_values, samples[1].pixel_values)
    learned = sum(int((s.labels != IGNORE).sum()) for s in samples[:2])
    assert batch.n_targets == learned and batch.n_tokens == n0 + samples[1].input_ids.shape[0]
    empty = collate([Skipped("y:2", "bad")], processor.pad_token_id)
    assert empty.n_targets == 0 and len(empty.skipped) == 1


def test_llava_and_swift_give_the_same_encoding(processor, tmp_path):
    rec = llava_records()[1]
    swift = {
        "messages": [
            {"role": "user", "content": rec["conversations"][0]["value"]},
            {"role": "assistant", "content": rec["conversations"][1]["value"]},
        ],
        "images": rec["image"],
    }
    a, b = tmp_path / "a.json", tmp_path / "b.jsonl"
    a.write_text(json.dumps([rec]))
    b.write_text(json.dumps(swift) + "\n")
    (ra,), _ = read_data([a], media_root=str(IMAGES))
    (rb,), _ = read_data([b], media_root=str(IMAGES))
    enc = _encoder(processor)
    sa, sb = enc(ra), enc(rb)
    assert torch.equal(sa.input_ids, sb.input_ids) and torch.equal(sa.labels, sb.labels)
