"""Attention targets in training data ("attend"): read and checked, turned into query positions and
visual tokens (or text tokens), a loss that moves the cross-attention (or self-attention) there;
per-parameter lr multipliers (lr_scales)."""

from __future__ import annotations

import json
import math
import random
from dataclasses import replace

import pytest
import torch

from owl3.checkpoint import load_model
from owl3.cli import main
from owl3.demo.data import Mix, ScenePool, draw_row, write_dataset
from owl3.demo.questions import scene_and_qa, video_grounding, video_question
from owl3.demo.world import CELL_NAMES
from owl3.errors import Owl3Error
from owl3.model.hyper import NEVER
from owl3.model.layers import repeat_kv
from owl3.processing import Processor
from owl3.training import SampleEncoder, TrainConfig, collate, read_data, train
from owl3.training.attention import attention_loss, cross_scores, text_attention_loss
from owl3.training.encode import Sample, Skipped
from owl3.training.metrics import read_metrics
from owl3.training.step import TrainStep
from tests.train_helpers import FIXTURE, IMAGES, base_options, reasons_by_line, write_rows

ANSWER = "The left one is bigger."
TWO = {"role": "user", "content": "Compare <image> and <image>."}


def _record(attend, images=("m1.png", "m2.png")) -> dict:
    return {
        "messages": [TWO, {"role": "assistant", "content": ANSWER}],
        "images": list(images),
        "attend": attend,
    }


def _video_record(attend) -> dict:
    return {
        "messages": [
            {"role": "user", "content": "Look: <image> then <video>"},
            {"role": "assistant", "content": "A ball rolls."},
        ],
        "images": ["m1.png"],
        "videos": [[f"f{i}.png" for i in range(5)]],
        "attend": attend,
    }


def test_attend_targets_are_read_and_checked(tmp_path):
    good = [{"image": 1, "box": [0.5, 0, 1, 0.5], "after": "The left one is"}]
    rows = [
        _record(good),
        _record([{"image": 2, "box": [0, 0, 1, 1], "after": ""}]),
        _record([{"image": 0, "box": [0.5, 0, 0.5, 1], "after": ""}]),
        _record([{"image": 0, "box": [0, 0, 1, 1], "after": "The right"}]),
        _record([{"image": 0, "box": [0, 0, 1, 1]}]),
        _video_record([{"video": 1, "frame": 0, "box": [0, 0, 1, 1], "after": ""}]),
        _record({"image": 0}),
        _video_record([{"video": 0, "frame": -1, "box": [0, 0, 1, 1], "after": ""}]),
    ]
    records, problems = read_data([write_rows(tmp_path / "a.jsonl", rows)], media_root=str(IMAGES))
    assert [r.line for r in records] == [1]
    a = records[0].attend[0]
    assert (a.image, a.box, a.after) == (1, (0.5, 0.0, 1.0, 0.5), "The left one is")
    why = reasons_by_line(problems)
    assert "image index in 0..1, got 2" in why[2]
    assert "0 <= x0 < x1 <= 1" in why[3]
    assert "start of answer 0" in why[4]
    assert '"after": str' in why[5]
    assert "video index in 0..0, got 1" in why[6]
    assert "must be a list" in why[7]
    assert "frame index >= 0" in why[8]


def test_targets_become_the_deciding_position_and_the_boxed_patches(tmp_path):
    processor = Processor.from_dir(FIXTURE, 56)
    attend = [
        {"image": 1, "box": [0.5, 0, 1, 0.5], "after": "The left one is"},
        {"image": 0, "box": [0, 0, 1, 1], "after": ""},
    ]
    f = tmp_path / "a.jsonl"
    f.write_text(json.dumps(_record(attend)) + "\n")
    (record,), _ = read_data([f], media_root=str(IMAGES))
    enc = SampleEncoder(processor, seq_len=4096, frames=8, crop_prob=1.0, seed=0, grid=4)
    sample = enc(record)
    assert isinstance(sample, Sample)
    ids = sample.input_ids.tolist()
    (pos, tokens), (pos0, tokens0) = sample.attend
    decode = processor.tokenizer.decode
    # the query predicts the word after `after`: everything up to it is the prompt + "The left one is"
    assert decode(ids[pos0 + 1 : pos + 1]) == "The left one is"
    assert decode(ids[pos + 1 :]).startswith(" bigger.")
    assert sample.labels[pos0 + 1] == ids[pos0 + 1]  # pos0 is the last token before the answer
    # top-right quadrant of the 4x4 grid of image 1 (whose tokens start at 16); all of image 0
    assert tokens == [16 + r * 4 + c for r in (0, 1) for c in (2, 3)]
    assert tokens0 == list(range(16))
    assert sample.pixel_values.shape[0] == 2  # crop_prob 1 but two images: never cropped
    batch = collate([sample, enc(record)], processor.pad_token_id)
    assert batch.attend == [sample.attend, sample.attend]
    # no grid: the targets are not read; an `after` that splits a token: the sample is skipped
    assert SampleEncoder(processor, seq_len=4096, frames=8, crop_prob=0.0, seed=0)(record).attend == []
    ids_of = lambda text: processor.tokenizer.encode(text, add_special_tokens=False).ids  # noqa: E731
    whole = ids_of(ANSWER)
    cut = next(i for i in range(1, len(ANSWER)) if whole[: len(ids_of(ANSWER[:i]))] != ids_of(ANSWER[:i]))
    f.write_text(json.dumps(_record([{"image": 0, "box": [0, 0, 1, 1], "after": ANSWER[:cut]}])) + "\n")
    (split,), _ = read_data([f], media_root=str(IMAGES))
    skipped = enc(split)
    assert isinstance(skipped, Skipped) and "does not end where a token" in skipped.reason


def test_video_frame_targets_count_the_pictures_before_them(tmp_path):
    processor = Processor.from_dir(FIXTURE, 56)
    rows = [
        _video_record([{"video": 0, "frame": 2, "box": [0, 0, 0.5, 1], "after": "A ball"}]),
        _video_record([{"video": 0, "frame": 5, "box": [0, 0, 1, 1], "after": ""}]),
    ]
    f = write_rows(tmp_path / "v.jsonl", rows)
    (ok, too_far), problems = read_data([f], media_root=str(IMAGES))
    assert not problems
    enc = SampleEncoder(processor, seq_len=4096, frames=5, crop_prob=0.0, seed=0, grid=4)
    sample = enc(ok)
    assert sample.pixel_values.shape[0] == 6  # the image, then 5 frames
    ((pos, tokens),) = sample.attend
    # the image is view 0, so frame 2 is view 3; the left half of a 4x4 grid
    assert tokens == [3 * 16 + r * 4 + c for r in range(4) for c in (0, 1)]
    assert processor.tokenizer.decode(sample.input_ids[pos + 1 :].tolist()).startswith(" rolls.")
    skipped = enc(too_far)
    assert isinstance(skipped, Skipped) and "attend.frame 5 but the video gives 5 frames" in skipped.reason


def test_attention_loss_is_minus_log_the_share_on_the_targets():
    torch.manual_seed(0)
    q = torch.randn(1, 4, 6, 8)
    k = torch.randn(1, 2, 10, 8)
    key_starts = torch.tensor([[0] * 5 + [3] * 5])  # image 2 is seen from position 4 on
    loss = attention_loss(q, k, key_starts, [[(5, [1, 7]), (2, [0, 4])]])
    s = cross_scores(q, k, key_starts, torch.arange(6)[None])
    w = s.softmax(-1)
    want = -w[0, :, 5, [1, 7]].sum(-1).log().mean() - w[0, :, 2, [0, 4]].sum(-1).log().mean()
    assert torch.allclose(loss, want)
    assert (w[0, :, 2, 5:] == 0).all()  # position 2 does not see image 2 yet
    same = torch.zeros(1, 2, 10, 8)  # equal scores: the share is 2 of the 5 visible tokens
    assert math.isclose(
        float(attention_loss(q, same, key_starts, [[(2, [0, 4])]])), -math.log(2 / 5), rel_tol=1e-6
    )


def test_training_with_the_attention_loss_moves_attention_to_the_box(tmp_path):
    attend = [{"image": 1, "box": [0.5, 0.5, 1, 1], "after": "The left one is"}]
    f = tmp_path / "a.jsonl"
    f.write_text((json.dumps(_record(attend)) + "\n") * 8)
    runs = {}
    for weight in (0.0, 4.0):
        opts = base_options(tmp_path / f"w{weight}", data=[str(f)], max_steps=25, lr=3e-3, warmup=0.0)
        opts["attention_loss_weight"] = weight
        train(TrainConfig.from_dict(opts))
        runs[weight] = read_metrics(tmp_path / f"w{weight}" / "out" / "metrics.jsonl")
    assert all("attention_loss" not in r for r in runs[0.0])
    att = [r["attention_loss"] for r in runs[4.0]]
    # 4 of the 32 visible visual tokens: -log(1/8) = 2.08 for attention spread evenly
    assert att[0] > 1.5 and att[-1] < 0.5 * att[0], att
    # "loss" is the answer loss alone in both runs: the same start, and both learn the answer
    assert math.isclose(runs[0.0][0]["loss"], runs[4.0][0]["loss"], rel_tol=1e-4)
    assert runs[4.0][-1]["loss"] < 0.5 * runs[4.0][0]["loss"]


def test_lr_scales_multiply_the_lr_of_matching_parameters(tmp_path, capsys):
    opts = base_options(tmp_path, max_steps=3, lr_scales={r"self_attn\.o_proj": 0.0, "nothing_here": 2.0})
    train(TrainConfig.from_dict(opts))
    assert "'nothing_here' matches no trained parameter" in capsys.readouterr().err
    before, after = load_model(FIXTURE).state_dict(), load_model(tmp_path / "out").state_dict()
    o_proj = [n for n in before if "self_attn.o_proj" in n]
    assert o_proj and all(torch.equal(before[n], after[n]) for n in o_proj)  # lr 0: untouched
    assert not torch.equal(before["language_model.model.layers.0.self_attn.q_proj.weight"],
                           after["language_model.model.layers.0.self_attn.q_proj.weight"])  # fmt: skip
    with pytest.raises(Exception, match="not a regular expression"):
        TrainConfig.from_dict(base_options(tmp_path, lr_scales={"(": 2.0})).resolved()
    with pytest.raises(SystemExit) as e:
        main(["train", "--model", str(FIXTURE), "--data", "x", "--output", "y", "--lr-scale", "o_proj"])
    assert e.value.code == 2
    assert "expected REGEX=FACTOR" in capsys.readouterr().err


def test_demo_rows_carry_grounding_targets_that_encode(tmp_path):
    rng = random.Random(3)
    for kind in ("colour", "shape", "size", "position", "position", "position"):
        scene, qa = scene_and_qa(rng, kind)
        targets = qa.grounding()
        (cell, after), *more = targets
        obj = next(o for o in scene.objects if o.cell == cell)
        assert qa.answer.startswith(after + " ")
        word = qa.answer[len(after) + 1 : -1]  # the deciding word(s)
        want = {"colour": obj.colour, "shape": obj.shape, "size": obj.size, "position": CELL_NAMES[cell]}
        assert word == want[kind]
        # a two-word place is decided at both words
        assert [a for _, a in more] == ([f"{after} {word.split()[0]}"] if " " in word else [])
    assert scene_and_qa(rng, "count_all")[1].grounding() == []
    for _ in range(20):
        scene, qa = scene_and_qa(rng, "exists")
        if qa.answer.startswith("No"):
            assert qa.grounding() == []
        elif qa.grounding():
            ((cell, after),) = qa.grounding()
            obj = next(o for o in scene.objects if o.cell == cell)
            assert after == "" and qa.answer == f"Yes, there is a {obj.colour} {obj.shape}."
    mix = Mix(single=1.0, multi=0.0, which=0.0, video=0.0, attend=True)
    data = write_dataset(tmp_path / "d", 40, mix=mix, pool=100)
    rows = [json.loads(line) for line in data.read_text().splitlines()]
    grounded = [r for r in rows if "attend" in r]
    assert 0 < len(grounded) < len(rows)
    demo = "owl3/assets/demo"
    processor = Processor.from_dir(demo, 84)
    records, problems = read_data([data])
    assert not problems
    enc = SampleEncoder(processor, seq_len=4096, frames=8, crop_prob=0.0, seed=0, grid=6)
    for record in records:
        sample = enc(record)
        assert isinstance(sample, Sample)
        assert len(sample.attend) == len(record.attend)
        for pos, tokens in sample.attend:
            assert len(tokens) == 4 and sample.labels[pos + 1] != -100  # a 2x2 cell; inside the answer
        assert len({pos for pos, _ in sample.attend}) == len(sample.attend)


def test_demo_video_rows_point_at_the_named_object_where_it_appeared(tmp_path):
    rng = random.Random(5)
    seen = set()
    for _ in range(60):
        q = video_question(rng)
        targets = video_grounding(q)
        if not targets:
            assert q.kind not in ("appear_after", "appear_first", "appear_last", "move_what")
            continue
        seen.add(q.kind)
        (frame, cell, after), (frame2, cell2, after2) = targets
        assert (frame, cell, after) == (frame2, cell2, "The") and q.answer.startswith(after2 + " ")
        colour, shape = after2.split(" ")[1], q.answer.split(" ")[2].rstrip(".")
        here = [(o.colour, o.shape) for o in q.video.frames[frame].objects if o.cell == cell]
        assert here == [(colour, shape)]
        if frame:  # it was not there a frame earlier: the frame it appeared in
            assert (colour, shape) not in [(o.colour, o.shape) for o in q.video.frames[frame - 1].objects]
    assert seen == {"appear_after", "appear_first", "appear_last", "move_what"}
    mix = Mix(single=0.0, multi=0.0, which=0.0, video=1.0, attend=True)
    processor = Processor.from_dir("owl3/assets/demo", 84)
    enc = SampleEncoder(processor, seq_len=4096, frames=8, crop_prob=0.0, seed=0, grid=6)
    data = write_dataset(tmp_path / "d", 12, mix=mix, pool=20)
    records, problems = read_data([data])
    assert not problems and any(r.attend for r in records)
    for record in records:
        sample = enc(record)
        assert isinstance(sample, Sample) and len(sample.attend) == len(record.attend)
    grounded = next(r for r in records if r.attend)
    assert grounded.attend[0].video is not None


# ------------------------------------------------------------------------------ text ("next_tokens") targets


def test_text_targets_are_read_checked_and_become_the_tokens_after_the_picture(tmp_path):
    rows = [
        _record([{"image": 0, "next_tokens": 3, "after": "The left one is"}]),
        _video_record([{"video": 0, "next_tokens": 2, "after": "A ball"}]),
        _record([{"image": 0, "next_tokens": 0, "after": ""}]),
        _record([{"image": 0, "next_tokens": True, "after": ""}]),
        _record([{"image": 0, "next_tokens": 2, "box": [0, 0, 1, 1], "after": ""}]),
        _record([{"image": 0, "next_tokens": 5, "after": ""}]),  # takes in image 1's token: skipped later
        _record([{"image": 1, "next_tokens": 20, "after": ""}]),  # reaches past the query: skipped later
    ]
    records, problems = read_data([write_rows(tmp_path / "t.jsonl", rows)], media_root=str(IMAGES))
    assert [r.line for r in records] == [1, 2, 6, 7]
    why = reasons_by_line(problems)
    assert "next_tokens must be a token count >= 1, got 0" in why[3]
    assert "got True" in why[4]
    assert '"next_tokens": int' in why[5]
    processor = Processor.from_dir(FIXTURE, 56)
    enc = SampleEncoder(processor, seq_len=4096, frames=5, crop_prob=0.0, seed=0, grid=4)
    decode = processor.tokenizer.decode
    image, video, *bad = (enc(r) for r in records)
    assert image.attend == [] and video.attend == []  # text targets only
    ((pos, tokens),) = image.attend_text
    ids = image.input_ids.tolist()
    first = image.media_starts[0]
    assert tokens == [first + 1, first + 2, first + 3]  # right after image 0's <|image|> token
    assert decode(ids[first + 1 : first + 4]).startswith(" and")  # "Compare <image> and <image>."
    assert decode(ids[pos + 1 :]).startswith(" bigger.")  # the same query as a box target's
    ((vpos, vtokens),) = video.attend_text
    last_frame = video.media_starts[-1]  # the video's 5 frames come after the image
    assert vtokens == [last_frame + 1, last_frame + 2] and len(video.media_starts) == 6
    assert decode(video.input_ids[vpos + 1 :].tolist()).startswith(" rolls.")
    assert all(isinstance(b, Skipped) and "must be text before the answer's query" in b.reason for b in bad)
    batch = collate([image, video], processor.pad_token_id)
    assert batch.attend_text == [image.attend_text, video.attend_text]


def test_text_attention_loss_is_minus_log_the_causal_share_on_the_tokens():
    torch.manual_seed(0)
    q = torch.randn(2, 4, 7, 8)
    k = torch.randn(2, 2, 7, 8)
    loss = text_attention_loss(q, k, [[(6, [1, 2])], [(3, [0]), (5, [4, 5])]])
    kk = repeat_kv(k, 2)  # head h reads kv head h // 2
    causal = torch.ones(7, 7).tril().bool()
    w = (q @ kk.transpose(-1, -2) / 8**0.5).masked_fill(~causal, -math.inf).softmax(-1)  # (B, H, T, T)
    want = -(
        w[0, :, 6, [1, 2]].sum(-1).log().mean()
        + w[1, :, 3, [0]].sum(-1).log().mean()
        + w[1, :, 5, [4, 5]].sum(-1).log().mean()
    )
    assert torch.allclose(loss, want)
    flat = torch.zeros(1, 2, 7, 8)  # equal scores: 2 of the 5 tokens a query at 4 sees
    loss_flat = float(text_attention_loss(q[:1], flat, [[(4, [0, 3])]]))
    assert math.isclose(loss_flat, -math.log(2 / 5), rel_tol=1e-6)


def test_training_with_text_targets_moves_self_attention_onto_them(tmp_path, capsys):
    attend = [{"image": 0, "next_tokens": 2, "after": "The left one is"}]
    f = tmp_path / "a.jsonl"
    f.write_text((json.dumps(_record(attend)) + "\n") * 8)
    opts = base_options(tmp_path / "t", data=[str(f)], max_steps=25, lr=3e-3, warmup=0.0)
    opts["attention_loss_weight"] = 4.0
    train(TrainConfig.from_dict(opts))
    att = [r["attention_loss"] for r in read_metrics(tmp_path / "t" / "out" / "metrics.jsonl")]
    # 2 of the ~30 tokens the query sees: about -log(2/30) = 2.7 for attention spread evenly
    assert att[0] > 1.5 and att[-1] < 0.5 * att[0], att
    # the default layer is the one before the last hyper layer (tiny: hyper layers 0 and 2 -> layer 1)
    model = load_model(FIXTURE)
    assert TrainStep(model).text_layer == 1
    assert TrainStep(model, attention_layer=0).text_layer == 0
    with pytest.raises(Owl3Error, match="decoder layers 0..3"):
        TrainStep(model, text_layer=4)
    with pytest.raises(Owl3Error, match="attention_layer 2: the model has 2 hyper layers"):
        TrainStep(model, attention_layer=2)
    code = main(["train", "--model", str(FIXTURE), "--data", str(f), "--output", str(tmp_path / "x"),
                 "--media-root", str(IMAGES), "--attention-loss-weight", "1",
                 "--text-attention-layer", "9"])  # fmt: skip
    assert code == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert "decoder layers 0..3" in err[-1]


def test_demo_binding_rows_target_image_x_without_changing_the_rows(tmp_path):
    plain = Mix(single=0.0, multi=0.7, which=0.3, video=0.0, n_min=2, n_max=6, window=0.5)
    bound = replace(plain, bind=True)
    a = write_dataset(tmp_path / "plain", 30, mix=plain, pool=100, name="rows")
    b = write_dataset(tmp_path / "bound", 30, mix=bound, pool=100, name="rows")
    rows_a = [json.loads(line) for line in a.read_text().splitlines()]
    rows_b = [json.loads(line) for line in b.read_text().splitlines()]
    assert [{k: v for k, v in r.items() if k != "attend"} for r in rows_b] == rows_a  # the same draws
    assert all("attend" not in r for r in rows_a)
    processor = Processor.from_dir("owl3/assets/demo", 84)
    enc = SampleEncoder(processor, seq_len=4096, frames=8, crop_prob=0.0, seed=0, grid=6)
    records, problems = read_data([b])
    assert not problems
    targeted = [r for r in records if r.attend]
    assert len(targeted) > 10
    labels = lambda text: [int(w.split(":")[0]) for w in text.split("Image ")[1:]]  # noqa: E731
    which = [r for r in records if "Which image" in r.messages[0]["content"]]
    assert which and not any(r.attend for r in which)  # "In Image X" rows only
    for record in targeted:
        listed = labels(record.messages[0]["content"].split(". In Image")[0])
        x = listed.index(int(record.messages[0]["content"].split("In Image ")[1].split(",")[0]))
        assert {a.image for a in record.attend} == {x}
        sample = enc(record)
        assert len(sample.attend) == len(sample.attend_text) == len(record.attend) // 2
        for (pos, cells), (pos2, tokens) in zip(sample.attend, sample.attend_text, strict=True):
            assert pos == pos2 and len(cells) == 4 and all(x * 36 <= c < (x + 1) * 36 for c in cells)
            assert tokens[0] == sample.media_starts[x] + 1 and len(tokens) == 4


def test_attention_targets_train_the_same_under_gradient_checkpointing(tmp_path):
    """The recorded queries and keys come from inside checkpointed layers: backward must recompute them."""
    attend = [
        {"image": 0, "next_tokens": 2, "after": "The left one is"},
        {"image": 1, "box": [0.5, 0.5, 1, 1], "after": "The left one is"},
    ]
    f = tmp_path / "a.jsonl"
    f.write_text((json.dumps(_record(attend)) + "\n") * 8)
    runs = {}
    for checkpointing in (False, True):
        out = tmp_path / f"gc{checkpointing}"
        opts = base_options(out, data=[str(f)], max_steps=3, lr=3e-3, warmup=0.0)
        opts.update(attention_loss_weight=4.0, gradient_checkpointing=checkpointing)
        train(TrainConfig.from_dict(opts))
        metrics = read_metrics(out / "out" / "metrics.jsonl")
        runs[checkpointing] = [v for r in metrics for v in (r["loss"], r["attention_loss"], r["grad_norm"])]
    assert runs[True] == pytest.approx(runs[False], rel=1e-5)
    assert runs[False][-2] < runs[False][1]  # the attention loss is trained


def test_a_union_of_boxes_targets_every_boxed_patch(tmp_path):
    union = [{"image": 1, "boxes": [[0, 0, 0.5, 0.5], [0.75, 0.75, 1, 1]], "after": "The left one is"}]
    rows = [
        _record(union),
        _record([{"image": 0, "boxes": [], "after": ""}]),
        _record([{"image": 0, "boxes": [[0, 0, 1, 1], [0.5, 0, 0.2, 1]], "after": ""}]),
        _record([{"image": 0, "boxes": [[0, 0, 1, 1]], "box": [0, 0, 1, 1], "after": ""}]),
    ]
    records, problems = read_data([write_rows(tmp_path / "a.jsonl", rows)], media_root=str(IMAGES))
    assert [r.line for r in records] == [1]
    (a,) = records[0].attend
    assert (a.image, a.box, a.boxes) == (1, None, ((0.0, 0.0, 0.5, 0.5), (0.75, 0.75, 1.0, 1.0)))
    why = reasons_by_line(problems)
    assert "non-empty list" in why[2]
    assert "boxes[1] must be [x0, y0, x1, y1]" in why[3]
    assert '"boxes"' in why[4]  # "box" and "boxes" together: not a known form
    processor = Processor.from_dir(FIXTURE, 56)
    sample = SampleEncoder(processor, seq_len=4096, frames=8, crop_prob=0.0, seed=0, grid=4)(records[0])
    ((_, tokens),) = sample.attend
    # image 1's tokens start at 16: its top-left quadrant and its bottom-right patch of the 4x4 grid
    assert tokens == [16 + 0, 16 + 1, 16 + 4, 16 + 5, 16 + 15]


def test_a_target_can_ask_the_token_after_an_image_to_look(tmp_path):
    look = {"image": 1, "box": [0.5, 0.5, 1, 1], "query": "after_image"}
    rows = [
        _record([look, {"image": 0, "boxes": [[0, 0, 0.5, 0.5]], "query": "after_image"}]),
        _record([{**look, "query": "before_image"}]),
        _record([{**look, "image": 2}]),
        _record([{**look, "after": ""}]),  # "after" belongs to answer targets only
    ]
    records, problems = read_data([write_rows(tmp_path / "a.jsonl", rows)], media_root=str(IMAGES))
    assert [r.line for r in records] == [1]
    a, b = records[0].attend
    assert (a.image, a.box, a.query) == (1, (0.5, 0.5, 1.0, 1.0), "after_image")
    assert (b.image, b.boxes, b.query) == (0, ((0.0, 0.0, 0.5, 0.5),), "after_image")
    why = reasons_by_line(problems)
    assert 'query must be "after_image"' in why[2]
    assert "image index in 0..1, got 2" in why[3]
    assert '"query": "after_image"' in why[4]  # not a known form: named in the message
    processor = Processor.from_dir(FIXTURE, 56)
    sample = SampleEncoder(processor, seq_len=4096, frames=8, crop_prob=0.0, seed=0, grid=4)(records[0])
    (pos_a, tokens_a), (pos_b, tokens_b) = sample.attend
    assert (pos_a, pos_b) == (sample.media_starts[1] + 1, sample.media_starts[0] + 1)
    decode = processor.tokenizer.decode
    between = sample.input_ids[pos_b : sample.media_starts[1]].tolist()  # "<image> and <image>"
    assert int(sample.input_ids[pos_b - 1]) == processor.image_token_id and decode(between).strip() == "and"
    assert tokens_a == [16 + r * 4 + c for r in (2, 3) for c in (2, 3)]  # image 1's bottom-right quadrant
    assert tokens_b == [r * 4 + c for r in (0, 1) for c in (0, 1)]


def test_demo_absence_targets_the_empty_cells_without_changing_the_rows(tmp_path):
    rng = random.Random(11)
    kinds = {"exists": [""], "count_colour": ["There", "There are"], "count_shape": ["There", "There are"]}
    said_none = set()
    for _ in range(300):
        kind = rng.choice(sorted(kinds))
        scene, qa = scene_and_qa(rng, kind)
        if qa.answer.startswith(("No,", "There are no")):
            said_none.add(kind)
            taken = {o.cell for o in scene.objects}
            if scene.word is not None:
                taken |= {3 * scene.word.row + c for c in range(3)}
            assert [after for _, after in qa.absence()] == kinds[kind]
            assert qa.answer.startswith("No," if kind == "exists" else "There are no ")
            for cells, _ in qa.absence():
                assert set(cells) == set(range(9)) - taken and cells
        else:
            assert qa.absence() == []
    assert said_none == set(kinds)
    assert scene_and_qa(rng, "colour")[1].absence() == []
    plain = Mix(single=0.5, multi=0.5, which=0.0, video=0.0, n_min=2, n_max=4, attend=True, bind=True,
                kinds=("exists", "count_colour", "count_shape"))  # fmt: skip
    a = write_dataset(tmp_path / "plain", 60, mix=plain, pool=100, name="rows")
    b = write_dataset(tmp_path / "absent", 60, mix=replace(plain, absent=True), pool=100, name="rows")
    rows_a = [json.loads(line) for line in a.read_text().splitlines()]
    rows_b = [json.loads(line) for line in b.read_text().splitlines()]
    strip = lambda r: {k: v for k, v in r.items() if k != "attend"}  # noqa: E731
    assert [strip(r) for r in rows_b] == [strip(r) for r in rows_a]  # the same draws
    processor = Processor.from_dir("owl3/assets/demo", 84)
    enc = SampleEncoder(processor, seq_len=4096, frames=8, crop_prob=0.0, seed=0, grid=6)
    records, problems = read_data([b])
    assert not problems
    none_rows = [r for r in records if r.messages[1]["content"].startswith(("No,", "There are no"))]
    assert len(none_rows) > 5 and any(len(r.images) > 1 for r in none_rows)
    for record, before in zip(records, rows_a, strict=True):
        new = record.attend[len(before.get("attend", [])) :]
        assert bool(new) == (record in none_rows)
        if not new:
            continue
        sample = enc(record)
        x = new[0].image
        union = new[0].boxes
        assert union and all(a.image == x for a in new)
        looks = [a for a in new if not a.next_tokens]
        words = []
        for pos, tokens in sample.attend[-len(looks) :]:
            # every patch of every empty cell of image x: 4 patches (2x2 of the 6x6 grid) per cell
            assert len(tokens) == 4 * len(union) and all(x * 36 <= t < (x + 1) * 36 for t in tokens)
            words.append(processor.tokenizer.decode(sample.input_ids[pos + 1 : pos + 2].tolist()).strip())
        assert words in (["No"], ["are", "no"])  # the words that say none
        if len(record.images) > 1:  # "In Image X": the text target on the tokens after image x too
            assert [a.next_tokens for a in new] == [0, 4] * len(looks)
            assert sample.attend_text[-1][1][0] == sample.media_starts[x] + 1


def test_targets_name_the_answer_of_a_later_turn(tmp_path):
    turns = [
        {"role": "user", "content": "Compare <image> and <image>."},
        {"role": "assistant", "content": ANSWER},
        {"role": "user", "content": "And the other way?"},
        {"role": "assistant", "content": "The right one is smaller."},
    ]
    second = {"image": 1, "box": [0, 0, 0.5, 0.5], "after": "The right one is", "turn": 1}
    rows = [
        {"messages": turns, "images": ["m1.png", "m2.png"], "attend": [second]},
        {"messages": turns, "images": ["m1.png", "m2.png"], "attend": [{**second, "turn": 2}]},
        {"messages": turns, "images": ["m1.png", "m2.png"], "attend": [{**second, "turn": 0}]},
    ]
    records, problems = read_data([write_rows(tmp_path / "a.jsonl", rows)], media_root=str(IMAGES))
    assert [r.line for r in records] == [1] and records[0].attend[0].turn == 1
    why = reasons_by_line(problems)
    assert "answer index in 0..1, got 2" in why[2]
    assert "start of answer 0" in why[3]  # "The right one is" does not start the first answer
    processor = Processor.from_dir(FIXTURE, 56)
    sample = SampleEncoder(processor, seq_len=4096, frames=8, crop_prob=0.0, seed=0, grid=4)(records[0])
    ((pos, tokens),) = sample.attend
    decode = processor.tokenizer.decode
    ids = sample.input_ids.tolist()
    assert decode(ids[: pos + 1]).endswith("bigger.\nuser\nAnd the other way?\nassistant\nThe right one is")
    assert decode(ids[pos + 1 :]).startswith(" smaller.")
    assert tokens == [16 + r * 4 + c for r in (0, 1) for c in (0, 1)]


def test_demo_rows_with_follow_up_turns(tmp_path):
    mix = Mix(single=0.3, multi=0.4, which=0.1, video=0.2, n_min=2, n_max=5, window=0.5, attend=True,
              bind=True, absent=True, turns=3)  # fmt: skip
    pool = ScenePool(100, 0)
    rng = random.Random(4)
    full = 0
    for _ in range(150):
        row = draw_row(rng, pool, mix)
        assert len(row.more) <= 2 and len(row.about) == 1 + len(row.more) - (row.video is not None)
        full += len(row.more) == 2
        if row.video is None and len(row.images) == 1:  # never the same object twice
            cells = [c for _, c in row.about if c is not None]
            assert len(cells) == len(set(cells))
        elif row.video is None:  # never the same image twice, each named by its label
            assert len({x for x, _ in row.about}) == len(row.about)
            for (question, _), (x, _) in zip(row.more, row.about[1:], strict=True):
                assert question.startswith(f"In Image {row.start + x}, ")
    assert full > 100
    data = write_dataset(tmp_path / "d", 60, mix=mix, pool=100)
    records, problems = read_data([data])
    assert not problems
    processor = Processor.from_dir("owl3/assets/demo", 84)
    enc = SampleEncoder(processor, seq_len=8192, frames=8, crop_prob=0.0, seed=0, grid=6)
    later = 0
    for record in records:
        users = [m["content"] for m in record.messages if m["role"] == "user"]
        answers = [m["content"] for m in record.messages if m["role"] == "assistant"]
        assert len(users) == len(answers) and all("<|image|>" not in u for u in users[1:])
        sample = enc(record)
        assert isinstance(sample, Sample)
        boxes = [a for a in record.attend if not a.next_tokens]
        assert len(sample.attend) == len(boxes)
        for a, (pos, _) in zip(boxes, sample.attend, strict=True):
            later += a.turn > 0
            # the query predicts the word right after `after` in answer `turn`
            text = processor.tokenizer.decode(sample.input_ids[: pos + 1].tolist())
            assert text.endswith(f"{users[a.turn][-12:]}\nassistant\n{a.after}")
        texts = [a for a in record.attend if a.next_tokens]
        for a, (pos, tokens) in zip(texts, sample.attend_text, strict=True):  # the tokens after image Y
            assert tokens[0] == sample.media_starts[a.image] + 1 and tokens[-1] < pos
    assert later > 20


def test_count_look_points_how_many_appeared_at_every_object_of_the_last_frame(tmp_path):
    """`Mix.count_look`: a video row asking how many objects appeared gets one target, at the count word
    (the answer's first), on the cells of all objects of the last frame; it reads and encodes as training
    data. Without it such rows carry no target."""
    mix = Mix(single=0.0, multi=0.0, which=0.0, video=1.0, video_kinds=("appear_count",), count_look=True)
    data = write_dataset(tmp_path / "d", 6, mix=mix, pool=20)
    records, problems = read_data([data])
    assert not problems and len(records) == 6
    enc = SampleEncoder(Processor.from_dir("owl3/assets/demo", 84), seq_len=4096, frames=8, crop_prob=0.0,
                        seed=0, grid=3)  # fmt: skip
    for line, record in zip(data.read_text().splitlines(), records, strict=True):
        row = json.loads(line)
        (target,) = row["attend"]
        assert target["after"] == "" and row["messages"][-1]["content"].endswith("objects appeared.")
        n = {"Three": 3, "Four": 4}[row["messages"][-1]["content"].split()[0]]
        assert len(target["boxes"]) == n and len({tuple(b) for b in target["boxes"]}) == n
        sample = enc(record)
        ((pos, tokens),) = sample.attend
        assert len(tokens) == n and sample.labels[pos + 1] != -100  # one cell each; the answer's first token
    plain = write_dataset(tmp_path / "p", 6, mix=replace(mix, count_look=False), pool=20)
    assert all(not json.loads(line).get("attend") for line in plain.read_text().splitlines())


def test_a_look_with_odds_spreads_its_share_over_the_picture(tmp_path):
    look = {"image": 1, "boxes": [[0, 0, 0.5, 0.5], [0.75, 0.75, 1, 1]], "after": "The left one is"}
    rows = [
        _record([{**look, "odds": 4}]),
        _record([{**look, "odds": 0}]),
        _record([{**look, "odds": "4"}]),
        _record([{"image": 1, "next_tokens": 2, "after": "", "odds": 4}]),
        _record([{"image": 0, "box": [0, 0, 1, 1], "query": "after_image", "odds": 2.5}]),
    ]
    records, problems = read_data([write_rows(tmp_path / "a.jsonl", rows)], media_root=str(IMAGES))
    assert [r.line for r in records] == [1, 5]
    assert records[0].attend[0].odds == 4.0 and records[1].attend[0].odds == 2.5
    why = reasons_by_line(problems)
    assert "odds must be a number > 0, got 0" in why[2] and "got '4'" in why[3]
    assert 'odds needs a "box" or "boxes" target' in why[4]
    processor = Processor.from_dir(FIXTURE, 56)
    enc = SampleEncoder(processor, seq_len=4096, frames=8, crop_prob=0.0, seed=0, grid=4)
    ((pos, tokens, shares),) = enc(records[0]).attend
    ((pos_hard, hard),) = enc(read_data([write_rows(tmp_path / "b.jsonl", [_record([look])])],
                                        media_root=str(IMAGES))[0][0]).attend  # fmt: skip
    assert pos == pos_hard and tokens == list(range(16, 32))  # every patch of image 1
    boxed = [16 + 0, 16 + 1, 16 + 4, 16 + 5, 16 + 15]
    assert hard == boxed
    # 5 patches in the boxes at 4x the share of each of the 11 others: 4 / 31 and 1 / 31
    assert math.isclose(sum(shares), 1.0)
    for t, p in zip(tokens, shares, strict=True):
        assert math.isclose(p, (4 if t in boxed else 1) / 31)


def test_the_loss_of_a_look_with_shares_is_their_cross_entropy_and_least_at_them():
    torch.manual_seed(0)
    q = torch.randn(1, 4, 6, 8)
    k = torch.randn(1, 2, 10, 8)
    key_starts = torch.tensor([[0] * 5 + [3] * 5])
    tokens, shares = [5, 6, 7, 8, 9], [0.4, 0.1, 0.1, 0.3, 0.1]
    loss = attention_loss(q, k, key_starts, [[(5, tokens, shares), (2, [0, 4])]])
    log_w = cross_scores(q, k, key_starts, torch.arange(6)[None]).log_softmax(-1)
    want = -(log_w[0, :, 5, tokens] * torch.tensor(shares)).sum(-1).mean()
    want = want - log_w[0, :, 2, [0, 4]].logsumexp(-1).mean()
    assert torch.allclose(loss, want)
    # a key whose scores give exactly those shares (and nothing elsewhere) is where the loss is least:
    # the entropy of the shares, and any other look costs more
    entropy = -sum(p * math.log(p) for p in shares)
    logits = torch.full((10,), -1e4)
    logits[tokens] = torch.tensor(shares).log()
    at = torch.zeros(1, 2, 10, 8)
    at[..., 0] = logits * 8**0.5  # q's first channel 1 below: scores = logits
    q1 = torch.zeros(1, 4, 6, 8)
    q1[..., 0] = 1.0
    starts = torch.zeros(1, 10, dtype=torch.long)
    best = float(attention_loss(q1, at, starts, [[(5, tokens, shares)]]))
    assert math.isclose(best, entropy, rel_tol=1e-5)
    assert float(attention_loss(q1, at * 0, starts, [[(5, tokens, shares)]])) > best + 0.1


def _loop_attention_loss(q, k, key_starts, attend):
    """The per-target reference (the implementation before the losses were batched)."""
    total = q.new_zeros(())
    for row, targets in enumerate(attend):
        for pos, tokens, *shares in targets:
            s = cross_scores(q[row : row + 1, :, pos : pos + 1], k[row : row + 1], key_starts[row : row + 1],
                             torch.tensor([[pos]]))  # fmt: skip
            log_w = torch.log_softmax(s[0, :, 0], -1)
            if shares:  # a 0 share adds nothing (the old code's 0 x -inf on an unseen token was nan)
                kept = [(t, p) for t, p in zip(tokens, shares[0], strict=True) if p > 0]
                p = torch.tensor([p for _, p in kept])
                total = total - (log_w[:, [t for t, _ in kept]] * p).sum(-1).mean()
            else:
                total = total - torch.logsumexp(log_w[:, tokens], -1).mean()
    return total


def _loop_text_attention_loss(q, k, attend_text):
    total = q.new_zeros(())
    for row, targets in enumerate(attend_text):
        for pos, tokens in targets:
            keys = repeat_kv(k[row : row + 1, :, : pos + 1], q.shape[1] // k.shape[1])[0]
            log_w = torch.log_softmax((keys @ q[row, :, pos, :, None])[..., 0] / q.shape[-1] ** 0.5, -1)
            total = total - torch.logsumexp(log_w[:, tokens], -1).mean()
    return total


def test_the_batched_attention_losses_equal_the_per_target_sums_in_value_and_gradient():
    torch.manual_seed(1)
    q = torch.randn(3, 4, 9, 8, requires_grad=True)
    k = torch.randn(3, 2, 12, 8, requires_grad=True)
    key_starts = torch.tensor([[0] * 4 + [4] * 4 + [NEVER] * 4, [1] * 12, [0] * 6 + [6] * 6])
    # plain targets, a token named twice, a target with shares (one of them 0 on an unseen token), a row
    # without targets
    attend = [
        [(5, [1, 6]), (3, [0, 0, 2])],
        [],
        [(8, [0, 7, 11], [0.5, 0.25, 0.25]), (4, [2, 9], [1.0, 0.0]), (7, [3])],
    ]
    text = [[(6, [1, 2]), (2, [2])], [(8, [0, 0, 5])], []]
    for batched, loop, args in (
        (attention_loss, _loop_attention_loss, (key_starts, attend)),
        (text_attention_loss, _loop_text_attention_loss, (text,)),
    ):
        got = batched(q, k, *args)
        grads = torch.autograd.grad(got, (q, k))
        want = loop(q, k, *args)
        assert torch.isfinite(got) and torch.allclose(got, want, atol=1e-5), (got, want)
        for g, w in zip(grads, torch.autograd.grad(want, (q, k)), strict=True):
            assert torch.allclose(g, w, atol=1e-5)
