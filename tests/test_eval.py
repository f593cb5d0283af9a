"""`owl3 eval synthetic`: the task's items, scoring, the runner with a mock pipeline, and the command end
to end on the built-in model (which scores about 0: the point is valid JSONL, JSON line and PNG)."""

from __future__ import annotations

import json
from types import SimpleNamespace

import pytest

from owl3.cli import main
from owl3.demo.synthetic import SyntheticTask
from owl3.errors import Owl3Error
from owl3.evaluation.runner import evaluate, format_table
from owl3.evaluation.task import normalize


def test_normalize_and_score():
    assert normalize("  The star is  RED. ") == normalize("the star is red") == "the star is red"
    task = SyntheticTask(images=[1], limit=1, frames=0, which_images=0)
    (item,) = task.items(56)
    assert task.score(item.answer.upper() + " ", item)
    assert not task.score(item.answer.replace(".", " really."), item)


def test_items_rows_and_formats():
    task = SyntheticTask(seed=3, images=[1, 4, 12], limit=5, frames=6, which_images=3)
    items = list(task.items(56))
    assert task.groups() == ["1", "4", "12", "video", "which"]
    assert [sum(i.group == g for i in items) for g in task.groups()] == [5] * 5
    by_id = {i.id: i for i in items}
    for i in range(5):
        one, four, twelve = by_id[f"images1-{i}"], by_id[f"images4-{i}"], by_id[f"images12-{i}"]
        # the same question about the same scene at every image count; only distractors change
        assert one.answer == four.answer == twelve.answer
        assert one.prompt.startswith("<|image|>\n")
        images, _ = twelve.media()
        x = twelve.meta["target"]
        assert len(images) == 12 and twelve.prompt.count("<|image|>") == 12
        assert f"<|image|>. In Image {x}, " in twelve.prompt
        assert images[x - 1].tobytes() == one.media()[0][0].tobytes()
        assert images[0].size == (56, 56)
    video = by_id["video-0"]
    assert video.prompt.startswith("<|video|>") and len(video.media()[1][0]) == 6
    assert by_id["which-1"].prompt.endswith("?") and len(by_id["which-1"].media()[0]) == 3
    kinds = {i.kind for i in items if i.group == "12"}
    assert len(kinds) == 5  # kinds cycle


def test_seeds_are_reproducible_and_distinct():
    a = [i.prompt + i.answer for i in SyntheticTask(seed=1, images=[3], limit=8).items(56)]
    b = [i.prompt + i.answer for i in SyntheticTask(seed=1, images=[3], limit=8).items(56)]
    c = [i.prompt + i.answer for i in SyntheticTask(seed=2, images=[3], limit=8).items(56)]
    assert a == b and a != c


def test_bad_arguments():
    with pytest.raises(Owl3Error):
        SyntheticTask(images=[0])
    with pytest.raises(Owl3Error):
        SyntheticTask(limit=0)


class OraclePipe:
    """Answers from a lookup table: right on 'In Image' questions, wrong elsewhere."""

    config = SimpleNamespace(image_size=56)

    def __init__(self, answers):
        self.answers = answers
        self.windows = []

    def chat_many(self, convs, in_flight=None, **kw):
        """`in_flight` conversations at a time, each window answered last one first (out of order)."""
        window = []
        for i, c in enumerate([*convs, None]):
            if c is not None:
                window.append((i, c))
            if window and (len(window) == in_flight or c is None):
                self.windows.append(len(window))
                for j, conv in reversed(window):
                    yield j, SimpleNamespace(text=self.answers.get(conv.messages, "I do not know."))
                window = []


def test_runner_counts_right_answers(tmp_path):
    task = SyntheticTask(images=[1, 5], limit=3, frames=4, which_images=2)
    answers = {i.prompt: i.answer for i in task.items(56) if i.group in ("1", "5")}
    pipe = OraclePipe(answers)
    report = evaluate(task, pipe, batch_size=2, output=tmp_path / "r.jsonl", progress=False)
    assert [r["accuracy"] for r in report.rows] == [1.0, 1.0, 0.0, 0.0]
    assert max(pipe.windows) == 2 and sum(pipe.windows) == 12
    # 3/3 right: the Wilson 95% interval is 0.4385..1 (hand-computed)
    assert report.summary["results"] == [
        {"images": 1, "questions": 3, "accuracy": 1.0, "ci95": [0.4385, 1.0]},
        {"images": 5, "questions": 3, "accuracy": 1.0, "ci95": [0.4385, 1.0]},
    ]
    assert report.summary["video"]["accuracy"] == 0.0 and report.summary["which"]["images"] == 2
    lines = (tmp_path / "r.jsonl").read_text().splitlines()
    assert len(lines) == 12 and json.loads(lines[0])["correct"] is True
    assert [json.loads(x)["id"] for x in lines] == [i.id for i in task.items(56)]  # question order
    assert "5 images" in format_table(report) and "43.9-100.0" in format_table(report)


def test_owl3_eval_synthetic_end_to_end(tmp_path, capsys):
    out = tmp_path / "res" / "R.jsonl"
    args = ["eval", "synthetic", "--seed", "1", "--images", "1,3", "--limit", "2", "--video-frames", "2",
            "--which-images", "2", "--max-new-tokens", "4", "--output", str(out), "--json"]  # fmt: skip
    assert main(args) == 0
    stdout = capsys.readouterr().out.strip().splitlines()
    final = json.loads(stdout[-1])
    assert final["task"] == "synthetic"
    assert [(r["images"], r["questions"]) for r in final["results"]] == [(1, 2), (3, 2)]
    assert all(0.0 <= r["accuracy"] <= 1.0 for r in final["results"])
    assert final["video"]["questions"] == 2 and final["which"]["questions"] == 2
    assert any("3 images" in line for line in stdout)
    records = [json.loads(line) for line in out.read_text().splitlines()]
    assert len(records) == 8
    for r in records:
        assert {"prompt", "prediction", "answer", "correct", "images"} <= set(r)
        assert isinstance(r["correct"], bool) and isinstance(r["prediction"], str)
    png = out.with_suffix(".png")
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_user_errors_are_one_line(capsys):
    assert main(["eval", "synthetic", "--images", "1,five"]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("owl3: error: --images") and "\n" not in err


def test_wilson_interval_and_exact_mcnemar_match_known_values():
    from owl3.evaluation.stats import mcnemar_p, wilson

    assert [round(x, 4) for x in wilson(50, 100)] == [0.4038, 0.5962]  # textbook values
    lo, hi = wilson(0, 10)
    assert lo == 0.0 and round(hi, 4) == 0.2775
    assert wilson(0, 0) == (0.0, 1.0)
    assert mcnemar_p(0, 5) == pytest.approx(2 / 32)  # five discordant questions, all one way
    assert mcnemar_p(1, 9) == pytest.approx(2 * 11 / 1024)
    assert mcnemar_p(5, 5) == 1.0 and mcnemar_p(0, 0) == 1.0


def _records(path, rows):
    path.write_text("".join(json.dumps({"id": i, "group": g, "correct": c}) + "\n" for i, g, c in rows))
    return path


def test_eval_compare_pairs_questions_by_id(tmp_path, capsys):
    rows_a = [("q1", "1", True), ("q2", "1", True), ("q3", "5", False), ("q4", "5", True),
              ("q5", "5", False), ("only-a", "5", True)]  # fmt: skip
    rows_b = [("q5", "5", True), ("q4", "5", True), ("q3", "5", True), ("q2", "1", False),
              ("q1", "1", True), ("only-b", "1", True)]  # fmt: skip
    a, b = _records(tmp_path / "a.jsonl", rows_a), _records(tmp_path / "b.jsonl", rows_b)
    assert main(["eval", "compare", str(a), str(b), "--json"]) == 0
    out = capsys.readouterr().out.strip().splitlines()
    rows = {r["group"]: r for r in json.loads(out[-1])["rows"]}
    assert list(rows) == ["1", "5", "all"]  # ids in one file only are left out
    assert rows["1"] == {"group": "1", "questions": 2, "accuracy_a": 1.0, "accuracy_b": 0.5, "only_a": 1,
                         "only_b": 0, "p": 1.0}  # fmt: skip
    assert (rows["5"]["questions"], rows["5"]["only_a"], rows["5"]["only_b"]) == (3, 0, 2)
    assert rows["5"]["p"] == 0.5 and rows["all"]["questions"] == 5
    assert any(line.startswith("5 ") and "+66.7" in line for line in out)


def test_eval_compare_errors_are_one_line(tmp_path, capsys):
    a = _records(tmp_path / "a.jsonl", [("q1", "1", True)])
    b = _records(tmp_path / "b.jsonl", [("x1", "1", True)])
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"id": "q1"}\n')
    for args in ([str(a), str(b)], [str(a), str(tmp_path / "missing.jsonl")], [str(a), str(bad)]):
        assert main(["eval", "compare", *args]) == 2
        err = capsys.readouterr().err.strip()
        assert err.startswith("owl3: error:") and "\n" not in err


def test_distractor_question_gives_the_scenes_and_answer_of_its_item():
    from owl3.demo.world import render

    task = SyntheticTask(seed=4, images=[1, 5], limit=3, frames=0, which_images=0)
    items = [item for item in task.items(56) if item.group == "5"]
    assert len(items) == 3
    for i, item in enumerate(items):
        kind, qa, x, scenes = task.distractor_question(5, i)
        assert (item.kind, item.answer, item.meta["target"]) == (kind, qa.answer, x)
        assert f"In Image {x}, " in item.prompt and len(scenes) == 5
        pictures, _ = item.media()
        assert [p.tobytes() for p in pictures] == [render(s, 56).tobytes() for s in scenes]
