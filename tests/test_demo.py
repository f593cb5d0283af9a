"""The built-in demo model and `owl3 demo`: the default model loads and is the trained demo model, `owl3 demo`
prints its table and the shipped model gets most answers right, `owl3 generate` without --model uses it;
`owl3 demo-train`: the recipe end to end at a tiny scale, the rows each phase draws, the same bytes for the
same seed; the training-side pieces it added (label windows in the data, a trainable vision tower)."""

from __future__ import annotations

import json
import re
from dataclasses import replace

import pytest
import torch
import yaml

import owl3
from owl3.api import DEFAULT_MODEL
from owl3.cli import main

# `owl3 demo --seed 0` with the shipped model: how many of its 8 answers are right (deterministic: greedy
# decoding, fixed pictures). The shipped model gets 6 of 8 (8 questions are few; docs/demo.md has its scores
# over hundreds). A regression guard to raise with each better model (the goal is most of the 8).
MIN_RIGHT = 6


@pytest.fixture(scope="module")
def demo_pipe():
    return owl3.load()


def test_default_model_is_the_demo_model(demo_pipe):
    assert demo_pipe.path.resolve() == DEFAULT_MODEL.resolve()
    cfg = demo_pipe.config
    assert cfg.image_size == 84 and cfg.text.hyper_layers == (1, 4) and cfg.text.dim == 128
    assert demo_pipe.tokenizer.token_to_id("<|image|>") == 970
    assert sum(f.stat().st_size for f in DEFAULT_MODEL.iterdir()) <= 20_000_000


def test_owl3_demo_prints_the_table_and_is_mostly_right(capsys, tmp_path):
    threads = torch.get_num_threads()
    torch.set_num_threads(threads + 1)
    try:
        rc = main(["demo", "--output", str(tmp_path)])
        assert torch.get_num_threads() == threads + 1  # the process's thread count is left alone
    finally:
        torch.set_num_threads(threads)
    out = capsys.readouterr().out
    assert rc == 0
    assert "question" in out and "model answer" in out and "correct answer" in out
    assert (tmp_path / "image1.png").is_file() and (tmp_path / "video.mp4").is_file()
    rows = [line for line in out.splitlines() if line.endswith(("✓", "✗"))]
    assert len(rows) == 8
    assert any("In Image" in r for r in rows) and sum("video" in r for r in rows) == 2
    m = re.search(r"(\d+)/(\d+) correct; answered .* in [\d.]+ s", out)
    assert m and int(m.group(2)) == 8
    assert int(m.group(1)) == sum(r.endswith("✓") for r in rows) >= MIN_RIGHT, out


def test_generate_without_model_uses_the_demo_model(capsys, tmp_path, demo_pipe):
    import random

    from owl3.demo.questions import single_question

    q = single_question(random.Random("test:generate"), "colour")
    path = tmp_path / "scene.png"
    q.render_images()[0].save(path)
    question = q.prompt.split("\n", 1)[1]
    rc = main(["generate", "--no-crop", "--image", str(path), question])
    out = capsys.readouterr().out
    assert rc == 0
    assert out == demo_pipe.chat(question, images=[str(path)], cut=False) + "\n"


def test_label_windows_in_training_rows(tmp_path):
    from owl3.demo.data import Mix, write_dataset

    mix = Mix(single=0.0, multi=0.5, which=0.15, video=0.0, n_min=2, n_max=8, window=1.0, max_label=60)
    path = write_dataset(tmp_path / "d", 40, mix=mix, pool=60, seed=3, name="w")
    starts = []
    for line in path.read_text().splitlines():
        row = json.loads(line)
        user, bot = row["messages"]
        labels = [int(k) for k in re.findall(r"Image (\d+): <image>", user["content"])]
        assert labels == list(range(labels[0], labels[0] + len(labels))) and labels[-1] <= 60
        asked = re.search(r"In Image (\d+),", user["content"]) or re.match(r"Image (\d+) ", bot["content"])
        assert asked and int(asked.group(1)) in labels
        starts.append(labels[0])
    assert max(starts) > 1


def test_train_vision_unfreezes_the_tower():
    from owl3.config import preset
    from owl3.model import Owl3Model
    from owl3.training.stages import apply_stage

    m = Owl3Model(preset("demo"))
    assert not any(n.startswith("vision_model.") for n in apply_stage(m, "sft"))
    names = apply_stage(m, "sft", train_vision=True)
    assert any(n.startswith("vision_model.") for n in names)
    assert not any(n.startswith("vision_model.") for n in apply_stage(m, "pretrain", train_vision=False))


def test_demo_train_runs_the_recipe_into_a_model_owl3_demo_runs(tmp_path, capsys):
    """The whole recipe at a tiny scale: tokenizer, init, each phase's data and training from the phase
    before, OUT/model on the `demo-cells` preset, which `owl3 demo` runs; re-running skips every phase."""
    from safetensors.torch import load_file

    from owl3.bench.common import machine
    from owl3.demo.train import PHASES, Phase, train_demo

    out = tmp_path / "run"
    tiny = dict(scale=0.001, batch_size=2, threads=1, pool=40, progress=False, say=lambda s: None)
    final = train_demo(out, **tiny)
    assert final == out / "model"
    dirs = [out / "init", *(out / f"phase-{k}-{ph.name}" for k, ph in enumerate(PHASES, 1))]
    for k, ph in enumerate(PHASES, 1):
        assert (dirs[k] / "model.safetensors").is_file()
        if isinstance(ph, Phase):
            # each phase's rows and pictures in a folder of its own: a later phase's pool (another seed) must
            # not overwrite the pictures an earlier phase's rows name; each trains from the phase before
            assert (out / "data" / ph.name / f"{ph.name}.jsonl").is_file()
            cfg = yaml.safe_load((dirs[k] / "train_config.yaml").read_text())
            assert cfg["model"] == str(dirs[k - 1]) and cfg["length_split"] == 2
    log = json.loads((out / "demo_train.json").read_text())
    assert [p["phase"] for p in log["phases"]] == [p.name for p in PHASES]
    # each trained phase names what trained it: weights repeat bit for bit only on the same kernels
    trained_phases = [p for p in log["phases"] if p["steps"]]
    assert trained_phases and all(p["machine"] == machine() for p in trained_phases)
    assert machine()["isa"] == torch.backends.cpu.get_cpu_capability()
    # re-running skips the finished phases and keeps their records (the recipe's total time stays known)
    train_demo(out, **tiny)
    again = json.loads((out / "demo_train.json").read_text())
    assert [p["phase"] for p in again["phases"]] == [p.name for p in PHASES]
    assert all(p["done_before"] for p in again["phases"])
    assert again["total_s"] >= sum(p["train_s"] for p in log["phases"]) - 0.1  # rounded to 0.1 s
    init, trained = load_file(out / "init" / "model.safetensors"), load_file(final / "model.safetensors")
    tower = [k for k in init if k.startswith("vision_model.") and k.endswith("weight") and "norm" not in k]
    assert any(not torch.equal(init[k], trained[k]) for k in tower)  # the tower was trained too
    assert owl3.load(final).config.vision.patch_size == 28  # demo-cells: one visual token per cell
    capsys.readouterr()
    assert main(["demo", "--model", str(final), "--output", str(tmp_path / "media")]) == 0
    assert "answered 8 questions" in capsys.readouterr().out


def test_demo_train_command_trains_as_the_shipped_weights_were(tmp_path, monkeypatch, capsys):
    """`owl3 demo-train` hands train_demo two threads (unless `--threads`) and batches in two pieces (unless
    `--length-split`), as the shipped weights were trained (another thread count sums floats in another
    order); the recipe and preset are train_demo's own; a bad value is one line and exit 2."""
    import owl3.demo.train as T

    seen = []
    monkeypatch.setattr(T, "train_demo", lambda out, **kw: seen.append(kw))
    assert main(["demo-train", str(tmp_path / "a")]) == 0
    options = ["--threads", "1", "--length-split", "1", "--seed", "3"]
    assert main(["demo-train", str(tmp_path / "b"), *options]) == 0
    assert [(kw["threads"], kw["length_split"], kw["seed"]) for kw in seen] == [(2, 2, 0), (1, 1, 3)]
    assert not {"phases", "preset"} & set(seen[0])
    assert main(["demo-train", str(tmp_path / "e"), "--length-split", "0"]) == 2  # one line, exit 2
    assert "--length-split" in capsys.readouterr().err and len(seen) == 2


def test_video_kinds_weight_the_video_questions_a_mix_draws():
    """`Mix.video_kinds` draws only the named video question kinds, a kind listed twice twice as often;
    without it every kind is drawn; an unknown kind is refused when the mix is made."""
    import random
    from collections import Counter

    from owl3.demo.data import Mix, ScenePool, draw_row
    from owl3.demo.questions import ALL_VIDEO_KINDS

    pool = ScenePool(20, 0)
    mix = Mix(single=0, multi=0, which=0, video=1, video_kinds=("appear_last", "appear_last", "move_what"))
    rng = random.Random(0)
    drawn = Counter(draw_row(rng, pool, mix).kind for _ in range(300))
    assert set(drawn) == {"appear_last", "move_what"} and drawn["appear_last"] > 1.5 * drawn["move_what"]
    rng = random.Random(0)
    every = Counter(draw_row(rng, pool, replace(mix, video_kinds=None)).kind for _ in range(300))
    assert set(every) == set(ALL_VIDEO_KINDS)
    with pytest.raises(ValueError, match="unknown video question kind"):
        Mix(video_kinds=("appear_after", "flies"))


def test_count_balance_draws_counts_of_none_one_and_two_as_often():
    """`Mix.count_balance`: one-image and "In Image X" rows asking how many objects of a colour or shape
    have true counts 0, 1 and 2 about equally often (without it "one" is ~3 in 4); the answer is the
    scene's true count; count_all rows are drawn as before. Without `count_balance_lists` only the
    one-image rows are balanced: the "In Image X" rows keep the world's counts."""
    import random
    from collections import Counter

    from owl3.demo.data import Mix, ScenePool, draw_row
    from owl3.demo.questions import NUMBERS

    pool = ScenePool(400, 0)
    kinds = ("count_colour", "count_shape")
    mix = Mix(single=0.5, multi=0.5, which=0, video=0, kinds=kinds, count_balance=True)

    def counts(m, images=None):
        rng, out = random.Random(1), Counter()
        for _ in range(600):
            row = draw_row(rng, pool, m)
            scene = pool.scenes[row.images[row.about[0][0]]]
            word, asked = row.answer.split(" ")[2], row.prompt.split("many ")[1].split(" ")[0]
            n = sum(asked in (o.colour, o.shape + "s", o.shape + "es") for o in scene.objects)
            assert NUMBERS[n] == word  # the scene's true count of what was asked
            if images is None or (len(row.images) == 1) == (images == "one"):
                out[n] += 1
        return out

    balanced, plain = counts(mix), counts(replace(mix, count_balance=False))
    assert set(balanced) == {0, 1, 2} and min(balanced.values()) > 150
    assert plain[1] > 0.6 * 600
    ones = replace(mix, count_balance_lists=False)
    one, lists = counts(ones, "one"), counts(ones, "lists")
    assert min(one.values()) > 0.25 * sum(one.values()) and set(one) == {0, 1, 2}
    assert lists[1] > 0.6 * sum(lists.values()) and sum(lists.values()) > 200
    rng = random.Random(0)
    all_rows = [draw_row(rng, pool, replace(mix, kinds=("count_all",))).answer for _ in range(50)]
    assert len(set(all_rows)) > 1


def test_count_objects_looks_at_every_counted_object_at_the_words_that_say_how_many(tmp_path):
    """`Mix.count_objects`: a one-image count of one or more gets a target on the counted objects' cells
    at "There" and "There is" / "There are" (the words before "is"/"are" and the number); a count of none
    gets the empty cells only with `absent`; it reads and encodes as training data."""
    import random

    from owl3.demo.data import Mix, ScenePool, _cell_box, draw_row, write_dataset
    from owl3.processing import Processor
    from owl3.training.data import read_data
    from owl3.training.encode import SampleEncoder

    pool = ScenePool(200, 0)
    mix = Mix(single=1, multi=0, which=0, video=0, kinds=("count_colour", "count_shape", "count_all"),
              attend=True, count_objects=True)  # fmt: skip
    rng = random.Random(0)
    seen_none = seen_two = False
    for _ in range(200):
        row = draw_row(rng, pool, mix)
        scene = pool.scenes[row.images[0]]
        words = row.answer.split(" ")
        if words[2] == "no":
            assert row.attend == ()
            seen_none = True
            continue
        asked = row.prompt.split("many ")[1].split(" ")[0]
        cells = sorted(o.cell for o in scene.objects
                       if asked in ("objects", o.colour, o.shape + "s", o.shape + "es"))  # fmt: skip
        boxes = [_cell_box(c) for c in cells]
        assert [t["after"] for t in row.attend] == ["There", " ".join(words[:2])]
        assert all(t["boxes"] == boxes and t["image"] == 0 for t in row.attend)
        seen_two |= len(cells) >= 2
    assert seen_none and seen_two
    data = write_dataset(tmp_path / "d", 8, mix=mix, pool=20)
    records, problems = read_data([data])
    assert not problems and len(records) == 8
    enc = SampleEncoder(Processor.from_dir("owl3/assets/demo", 84), seq_len=4096, frames=8, crop_prob=0.0,
                        seed=0, grid=3)  # fmt: skip
    for record in records:
        sample = enc(record)
        assert all(sample.labels[pos + 1] != -100 for pos, _ in sample.attend)  # answer words decide
    # with count_odds the same looks spread over the picture; the absence looks stay on the empty cells
    odds = replace(mix, count_odds=4.0, absent=True)
    rng = random.Random(0)
    seen = set()
    for _ in range(100):
        row = draw_row(rng, pool, odds)
        none = row.answer.split(" ")[2] == "no"
        assert row.attend and all(("odds" in t) == (not none) for t in row.attend)
        assert all(t.get("odds", 4.0) == 4.0 for t in row.attend)
        seen.add(none)
    assert seen == {True, False}


def test_each_phase_draws_the_rows_its_mix_asks_for():
    """Every question phase of the recipe draws the row types, question kinds, image counts, label windows,
    follow-up turns and attention targets its Mix asks for, and none it does not."""
    import random

    from owl3.demo.data import ScenePool, draw_row
    from owl3.demo.questions import ALL_VIDEO_KINDS, SINGLE_KINDS, WHICH_KINDS
    from owl3.demo.train import PHASES, Phase

    pool = ScenePool(300, 0)
    phases = [ph for ph in PHASES if isinstance(ph, Phase)]
    assert len(phases) == 7
    for ph in phases:
        m, rng = ph.mix, random.Random(ph.name)
        rows = [draw_row(rng, pool, m) for _ in range(200)]
        video = [r for r in rows if r.video is not None]
        one = [r for r in rows if r.video is None and len(r.images) == 1]
        which = [r for r in rows if r.kind in WHICH_KINDS]
        multi = [r for r in rows if r.video is None and len(r.images) > 1 and r.kind not in WHICH_KINDS]
        shares = [(len(one), m.single), (len(multi), m.multi), (len(which), m.which), (len(video), m.video)]
        assert all((n > 0) == (share > 0) for n, share in shares), (ph.name, shares)
        assert {r.kind for r in video} <= set(m.video_kinds or ALL_VIDEO_KINDS)
        assert {r.kind for r in one + multi} <= set(m.kinds or SINGLE_KINDS)
        lists = multi + which
        assert all(m.n_min <= len(r.images) <= m.n_max for r in lists)
        assert any(len(r.images) > 8 for r in lists) == (m.n_max > 8)  # log-uniform up to 24 or 32
        assert any(r.start > 1 for r in lists) == (m.window > 0)  # labels numbered from a random start
        assert all(len(r.more) < m.turns for r in rows) and any(len(r.more) == m.turns - 1 for r in rows)
        targets = [t for r in rows for t in r.attend]
        assert any(r.attend for r in one) == m.attend  # the grounding looks of one-image answers
        assert any(t.get("video") == 0 for t in targets) == m.attend
        assert any("next_tokens" in t for t in targets) == m.bind  # the tokens after image X
        texts = [t for t in targets if "text" in t]  # the label targets, on query head 3
        assert bool(texts) == m.copy_label and all(t["heads"] == list(m.copy_heads) for t in texts)
        one_boxes = [t for r in one for t in r.attend if "boxes" in t]  # empty cells, counted objects
        assert bool(one_boxes) == (m.absent or m.count_objects)
        assert any("odds" in t for t in one_boxes) == (m.count_odds > 0)


def test_a_phase_writes_the_same_bytes_for_the_same_seed(tmp_path):
    """The rows, pictures and videos of a phase are a function of its seed: the same seed writes the same
    files byte for byte, another seed others."""
    from owl3.demo.data import write_dataset
    from owl3.demo.train import PHASES

    mix = PHASES[-1].mix  # lists, videos, follow-up turns, every kind of target

    def files(name: str, seed: int) -> dict[str, bytes]:
        folder = write_dataset(tmp_path / name, 12, mix=mix, seed=seed, pool=30, name="two").parent
        return {p.relative_to(folder).as_posix(): p.read_bytes() for p in folder.rglob("*") if p.is_file()}

    a = files("a", 5)
    assert any(k.endswith(".mp4") for k in a) and any(k.endswith(".png") for k in a)
    assert files("b", 5) == a
    assert files("c", 6)["two.jsonl"] != a["two.jsonl"]
