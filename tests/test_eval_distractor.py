"""`owl3 eval distractor`: prompts per level, every prompt holds N images with the true one at X and no copy
of it elsewhere, variants that differ in option order and in distractors, a question right only if every
variant is, draws reproducible from the seed and saved, the plot, and the command on the tiny model."""

from __future__ import annotations

import json
import re

import pytest

from owl3.cli import main
from owl3.errors import Owl3Error
from owl3.evaluation.benchmark import run_benchmark
from owl3.evaluation.distractor import DistractorTask
from tests.eval_helpers import ScriptedBackend, answer_colour, mmbench_rows, write_tsv


@pytest.fixture(scope="module")
def tsv(tmp_path_factory):
    rows = mmbench_rows(8)
    # MMBench asks several questions about one image: a 9th question on question 0's image
    rows.append({**rows[0], "index": 8, "question": "What colour is the square number 0? (again)"})
    return write_tsv(tmp_path_factory.mktemp("dis") / "MMBench_DEV_EN.tsv", rows)


def test_prompts_per_level_images_and_target(tsv):
    task = DistractorTask(tsv, images=[1, 3, 6], variants=3, seed=5)
    items = list(task.items())
    assert [sum(i.meta["images"] == n for i in items) for n in (1, 3, 6)] == [9 * 3] * 3
    for item in items:
        n, x = item.meta["images"], item.meta["target"]
        images, videos = item.media()
        assert len(images) == n == item.prompt.count("<|image|>") and videos == [] and not item.cut
        assert item.prompt.startswith(" ".join(f"Image {i}: <|image|>" for i in range(1, n + 1)) + ". ")
        assert f". In Image {x}, What colour is the square number " in item.prompt
        assert item.prompt.endswith("Answer with the option’s letter from the given choices directly.")
        own = int(re.search(r"square number (\d+)", item.prompt).group(1))
        pixels = [im.getpixel((1, 1)) for im in images]
        truth = task.data.image(own).getpixel((1, 1))
        assert pixels[x - 1] == truth and pixels.count(truth) == 1  # question 8 shares 0's image: never drawn
        assert item.meta["image_indices"][x - 1] in (own, 8 if own == 0 else own)
        row = task.data.rows[int(item.question.split("@")[0])]
        assert item.choices[item.answer] == row.options[row.answer]


def test_variants_differ_in_option_order_and_distractors(tsv):
    task = DistractorTask(tsv, images=[6], variants=3, seed=1)
    by_q: dict[str, list] = {}
    for item in task.items():
        by_q.setdefault(item.question, []).append(item)
    assert len(by_q) == 9
    for variants in by_q.values():
        assert [v.variant for v in variants] == [0, 1, 2]
        orders = [tuple(v.choices.values()) for v in variants]
        k = len(orders[0])
        assert len(set(orders[: min(k, 3)])) == min(k, 3)  # rotations differ (as many as there are options)
        draws = [tuple(v.meta["image_indices"]) for v in variants]
        assert len(set(draws)) == 3


def test_draws_are_reproducible_from_the_seed(tsv):
    a = DistractorTask(tsv, images=[1, 4], variants=2, seed=3).sets()
    b = DistractorTask(tsv, images=[4, 1], variants=2, seed=3).sets()
    c = DistractorTask(tsv, images=[1, 4], variants=2, seed=4).sets()
    assert a == b and a != c and len(a) == 9 * 2 * 2


def test_a_question_counts_only_if_every_variant_is_right(tsv):
    task = DistractorTask(tsv, images=[1, 3], variants=2)

    def script(item):  # wrong on variant 1 of every question at 3 images
        return "none" if item.meta["images"] == 3 and item.variant == 1 else answer_colour(item.prompt)

    out = run_benchmark(task, ScriptedBackend(script))
    results = out.summary["results"]
    assert [(r["images"], r["questions"], r["accuracy"]) for r in results] == [(1, 9, 1.0), (3, 9, 0.0)]


def test_too_many_images_for_the_file_is_a_clear_error(tsv):
    with pytest.raises(Owl3Error, match="distinct images"):
        DistractorTask(tsv, images=[9])  # 8 distinct images: at most 7 distractors
    with pytest.raises(Owl3Error):
        DistractorTask(tsv, variants=0)


def test_owl3_eval_distractor_end_to_end_on_the_tiny_model(tsv, tiny_dir, tmp_path, capsys):
    out = tmp_path / "D.jsonl"
    args = ["eval", "distractor", "--data", str(tsv), "--model", str(tiny_dir), "--images", "1,4",
            "--variants", "2", "--limit", "2", "--max-new-tokens", "2", "--output", str(out),
            "--json"]  # fmt: skip
    assert main(args) == 0
    lines = capsys.readouterr().out.strip().splitlines()
    final = json.loads(lines[-1])
    assert [(r["images"], r["questions"]) for r in final["results"]] == [(1, 2), (4, 2)]
    assert final["prompts"] == 8
    assert out.with_suffix(".png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    sets = json.loads(out.with_suffix(".sets.json").read_text())
    assert sets["config"]["seed"] == 0 and len(sets["sets"]) == 9 * 2 * 2
    records = [json.loads(x) for x in out.read_text().splitlines()[1:]]
    drawn = {(s["index"], s["images"], s["variant"]): s["image_indices"] for s in sets["sets"]}
    for r in records:
        q = int(r["question"].split("@")[0])
        assert r["image_indices"] == drawn[(q, r["images"], r["variant"])]


def test_distractor_shards_merge_to_the_plot_and_compare_per_count(tsv, tmp_path, capsys):
    def script(item):  # misses every variant-1 prompt of question 2 at 3 images
        wrong = item.question == "2@3" and item.variant == 1
        return "none" if wrong else answer_colour(item.prompt)

    task = DistractorTask(tsv, images=[1, 3], variants=2)
    whole = run_benchmark(task, ScriptedBackend(script), output=tmp_path / "all.jsonl")
    for i in (1, 2):
        run_benchmark(task, ScriptedBackend(script), output=tmp_path / f"s{i}.jsonl", shard=(i, 2))
    merged = tmp_path / "m.jsonl"
    shards = [str(tmp_path / "s1.jsonl"), str(tmp_path / "s2.jsonl")]
    assert main(["eval", "merge", *shards, "--output", str(merged), "--json"]) == 0
    final = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert final["results"] == whole.summary["results"]
    assert [(r["images"], r["correct"]) for r in final["results"]] == [(1, 9), (3, 8)]
    assert merged.with_suffix(".png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    # compare pairs questions per image count: all-right vs the merged run differ on one question at N=3
    perfect = run_benchmark(task, ScriptedBackend(lambda it: answer_colour(it.prompt)),
                            output=tmp_path / "p.jsonl")  # fmt: skip
    assert perfect.summary["accuracy"] == 1.0
    assert main(["eval", "compare", str(tmp_path / "p.jsonl"), str(merged), "--json"]) == 0
    rows = {r["group"]: r for r in json.loads(capsys.readouterr().out.strip().splitlines()[-1])["rows"]}
    assert (rows["1"]["questions"], rows["1"]["only_a"]) == (9, 0)
    assert (rows["3"]["questions"], rows["3"]["only_a"], rows["3"]["only_b"]) == (9, 1, 0)
