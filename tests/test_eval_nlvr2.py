"""`owl3 eval nlvr2`: the NLVR2 JSON lines with their image pairs and the lmms-lab parquet (pyarrow is a
test dependency), the official two-image prompt, yes/no scoring, and the command on the tiny model."""

from __future__ import annotations

import json

import pytest

from owl3.cli import main
from owl3.evaluation.benchmark import run_benchmark
from owl3.evaluation.nlvr2 import NLVR2Task
from tests.eval_helpers import RGB, ScriptedBackend, write_nlvr2, write_nlvr2_parquet

PROMPT = (
    "Left image: <|image|> Right image: <|image|>\nBoth images show the same colour.\n"
    "yes or no? Answer the question using a single word."
)


def _same(item) -> str:
    left, right = item.media()[0]
    return "Yes." if left.getpixel((0, 0)) == right.getpixel((0, 0)) else "No, they differ."


@pytest.mark.parametrize("fmt", ["jsonl", "parquet"])
def test_nlvr2_formats_prompt_and_scoring(fmt, tmp_path):
    data = write_nlvr2(tmp_path / "nlvr2") if fmt == "jsonl" else write_nlvr2_parquet(tmp_path / "t.parquet")
    task = NLVR2Task(data)
    items = list(task.items())
    assert len(items) == 4 and all(i.prompt == PROMPT and not i.cut for i in items)
    assert [i.answer for i in items] == ["yes", "no", "yes", "no"]
    left, right = items[1].media()[0]
    assert left.getpixel((0, 0)) == RGB["green"] and right.getpixel((0, 0)) == RGB["blue"]
    out = run_benchmark(task, ScriptedBackend(_same))
    assert out.summary["accuracy"] == 1.0 and out.summary["extraction"] == {"first word": 4}
    wrong = run_benchmark(task, ScriptedBackend(lambda it: "yes"))
    assert wrong.summary["accuracy"] == 0.5


def test_missing_images_name_the_folder(tmp_path, capsys):
    data = write_nlvr2(tmp_path / "n")
    (tmp_path / "n" / "dev-2-0-img1.png").unlink()
    assert main(["eval", "nlvr2", "--data", str(data), "--model", "x"]) == 2
    err = capsys.readouterr().err
    assert "dev-2-0-img0.png" in err and "--image-root" in err


def test_owl3_eval_nlvr2_end_to_end_on_the_tiny_model(tmp_path, tiny_dir, capsys):
    data = write_nlvr2(tmp_path / "n")
    images = tmp_path / "elsewhere"
    (tmp_path / "n").rename(images)
    out = tmp_path / "N.jsonl"
    args = ["eval", "nlvr2", "--data", str(images / "dev.json"), "--image-root", str(images), "--model",
            str(tiny_dir), "--max-new-tokens", "2", "--output", str(out), "--json"]  # fmt: skip
    del data
    assert main(args) == 0
    final = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert final["task"] == "nlvr2" and final["questions"] == final["prompts"] == 4
    records = [json.loads(x) for x in out.read_text().splitlines()[1:]]
    assert {r["answer"] for r in records} == {"yes", "no"}
    assert all(r["rule"] in ("first word", "yes/no word", "refusal", "none") for r in records)
