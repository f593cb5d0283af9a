"""`owl3 eval mmbench`: the official prompt, CircularEval from the TSV's rotated rows and built from the
options (the same prompts either way), scoring per question / category / l2-category, resume, shards +
merge == one run, compare by question, and the command end to end on the tiny model."""

from __future__ import annotations

import json
from types import SimpleNamespace

import pytest

from owl3.cli import main
from owl3.errors import Owl3Error
from owl3.evaluation.benchmark import run_benchmark
from owl3.evaluation.mmbench import MMBenchTask
from owl3.evaluation.records import read_results
from tests.eval_helpers import ScriptedBackend, answer_colour, circular_rows, mmbench_rows, write_tsv


@pytest.fixture(scope="module")
def tsv(tmp_path_factory):
    return write_tsv(tmp_path_factory.mktemp("mmb") / "MMBench_DEV_EN.tsv", mmbench_rows(6))


@pytest.fixture(scope="module")
def tsv_circular(tmp_path_factory):
    return write_tsv(tmp_path_factory.mktemp("mmbc") / "MMBench_DEV_EN.tsv", circular_rows(mmbench_rows(6)))


def test_official_prompt_and_rotations_built_from_the_options(tsv):
    items = list(MMBenchTask(tsv).items())
    # question i has 2 + i % 3 options, so 2 + 3 + 4 + 2 + 3 + 4 rotations
    assert len(items) == 18
    first = items[0]
    assert first.prompt == (
        "<|image|>Context: N/A\nQuestion: What colour is the square number 0?\n"
        "Options: A. red\nB. green\nAnswer with the option’s letter from the given choices directly."
    )
    assert "Context: Hint 1: look closely.\n" in items[2].prompt
    assert first.cut and first.choices == {"A": "red", "B": "green"}
    q1 = [i for i in items if i.question == "1"]
    assert [i.id for i in q1] == ["1", "1000001", "2000001"] and [i.variant for i in q1] == [0, 1, 2]
    # every rotation holds the same options, the right one at a different letter each time
    assert {tuple(sorted(i.choices.values())) for i in q1} == {tuple(sorted(q1[0].choices.values()))}
    assert len({i.answer for i in q1}) == 3
    assert all(i.choices[i.answer] == "green" for i in q1)
    assert q1[0].rows == ("category: shape", "l2-category: reasoning")
    images, videos = first.media()
    assert len(images) == 1 and images[0].getpixel((3, 3)) == (220, 30, 30) and videos == []


def test_tsv_circular_rows_are_grouped_by_index_mod_1e6(tsv, tsv_circular):
    built = {i.id: i for i in MMBenchTask(tsv).items()}
    given = {i.id: i for i in MMBenchTask(tsv_circular).items()}
    assert built.keys() == given.keys()
    for k, item in given.items():
        b = built[k]
        assert (item.prompt, item.answer, item.question) == (b.prompt, b.answer, b.question)
    # the rotated rows refer to the main row's image by its index
    assert given["1000003"].media()[0][0].tobytes() == given["3"].media()[0][0].tobytes()
    assert len(list(MMBenchTask(tsv_circular, circular=False).items())) == 6


def test_a_question_counts_only_if_every_rotation_is_right(tsv):
    task = MMBenchTask(tsv)

    def script(item):  # right everywhere, except the second rotation of question 4 and any of question 5
        if item.id == "1000004" or item.question == "5":
            return "Z"
        return f"The answer is {answer_colour(item.prompt)}."

    out = run_benchmark(task, ScriptedBackend(script))
    rows = {r["row"]: r for r in out.summary["rows"]}
    assert rows["all"]["questions"] == 6 and rows["all"]["correct"] == 4
    assert out.summary["prompts"] == 18 and out.summary["accuracy"] == round(4 / 6, 4)
    # question 4: colour/reasoning; question 5: shape/knowledge
    assert (rows["category: colour"]["questions"], rows["category: colour"]["correct"]) == (3, 2)
    assert (rows["l2-category: knowledge"]["questions"], rows["l2-category: knowledge"]["correct"]) == (2, 1)
    assert (rows["l2-category: reasoning"]["questions"], rows["l2-category: reasoning"]["correct"]) == (2, 1)
    assert out.summary["extraction"] == {"answer phrase": 13, "none": 5}
    assert list(rows)[0] == "all" and list(rows)[1:3] == ["category: colour", "category: shape"]


def test_resume_skips_answered_prompts_and_refuses_another_run(tsv, tmp_path):
    out = tmp_path / "r.jsonl"
    first = ScriptedBackend(lambda it: answer_colour(it.prompt))
    run_benchmark(MMBenchTask(tsv), first, output=out, limit=2)
    assert len(first.asked) == 5  # questions 0 and 1: 2 + 3 rotations
    # a run killed mid-write leaves a torn line: it is dropped and that prompt asked again
    text = out.read_text()
    out.write_text(text + '{"id": "2", "n": 5, "quest')
    second = ScriptedBackend(lambda it: answer_colour(it.prompt))
    res = run_benchmark(MMBenchTask(tsv), second, output=out, limit=2)
    assert second.asked == [] and res.summary["prompts"] == 5 and res.summary["accuracy"] == 1.0
    header, records = read_results(out)
    assert header["task"] == "mmbench" and len(records) == 5
    with pytest.raises(Owl3Error, match="another run"):
        run_benchmark(MMBenchTask(tsv), second, output=out, limit=3)
    with pytest.raises(Owl3Error, match="another run"):
        run_benchmark(MMBenchTask(tsv, circular=False), second, output=out, limit=2)


def test_shards_and_merge_give_the_scores_of_one_run(tsv, tmp_path, capsys):
    def script(item):
        return answer_colour(item.prompt) if int(item.question) % 2 == 0 or item.variant == 0 else "no idea"

    whole = run_benchmark(MMBenchTask(tsv), ScriptedBackend(script), output=tmp_path / "all.jsonl")
    asked = []
    for i in (1, 2, 3):
        b = ScriptedBackend(script)
        run_benchmark(MMBenchTask(tsv), b, output=tmp_path / f"s{i}.jsonl", shard=(i, 3))
        asked.append({it.question for it in b.asked})
    assert asked == [{"0", "3"}, {"1", "4"}, {"2", "5"}]  # whole questions, every third
    files = [str(tmp_path / f"s{i}.jsonl") for i in (3, 1, 2)]
    assert main(["eval", "merge", *files, "--output", str(tmp_path / "m.jsonl"), "--json"]) == 0
    merged = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert merged["rows"] == whole.summary["rows"] and merged["accuracy"] == whole.summary["accuracy"] == 0.5
    assert merged["prompts"] == 18
    # the merged file scores the same through compare as the single run: no discordant question
    assert main(["eval", "compare", str(tmp_path / "all.jsonl"), str(tmp_path / "m.jsonl"), "--json"]) == 0
    rows = json.loads(capsys.readouterr().out.strip().splitlines()[-1])["rows"]
    assert rows[-1]["questions"] == 6 and rows[-1]["only_a"] == rows[-1]["only_b"] == 0
    # a shard missing, or given twice: one clear line, exit 2
    for bad in (files[:2], [files[0], files[0], files[1]]):
        assert main(["eval", "merge", *bad]) == 2
        err = capsys.readouterr().err.strip()
        assert err.startswith("owl3: error:") and "\n" not in err


def test_compare_pairs_benchmark_records_by_question(tsv, tmp_path, capsys):
    good = ScriptedBackend(lambda it: answer_colour(it.prompt))
    # B misses one rotation of questions 1 and 2: both questions wrong for B
    bad = ScriptedBackend(lambda it: "Z" if it.id in ("1000001", "2") else answer_colour(it.prompt))
    run_benchmark(MMBenchTask(tsv), good, output=tmp_path / "a.jsonl")
    run_benchmark(MMBenchTask(tsv), bad, output=tmp_path / "b.jsonl")
    assert main(["eval", "compare", str(tmp_path / "a.jsonl"), str(tmp_path / "b.jsonl"), "--json"]) == 0
    rows = json.loads(capsys.readouterr().out.strip().splitlines()[-1])["rows"]
    total = rows[-1]
    assert total["group"] == "all" and total["questions"] == 6
    assert (total["only_a"], total["only_b"], total["p"]) == (2, 0, 0.5)


def test_bad_files_are_one_line_errors(tmp_path, capsys):
    no_answers = tmp_path / "test.tsv"
    rows = mmbench_rows(2)
    for r in rows:
        r["answer"] = ""
    write_tsv(no_answers, rows)
    not_tsv = tmp_path / "x.tsv"
    not_tsv.write_text("a\tb\n1\t2\n")
    for data in (no_answers, not_tsv, tmp_path / "missing.tsv"):
        assert main(["eval", "mmbench", "--data", str(data), "--model", "x"]) == 2
        err = capsys.readouterr().err.strip()
        assert err.startswith("owl3: error:") and "\n" not in err
    assert main(["eval", "mmbench", "--data", str(no_answers), "--shard", "3/2"]) == 2
    assert "--shard" in capsys.readouterr().err


def test_owl3_eval_mmbench_end_to_end_on_the_tiny_model(tsv, tiny_dir, tmp_path, capsys):
    out = tmp_path / "R.jsonl"
    args = ["eval", "mmbench", "--data", str(tsv), "--model", str(tiny_dir), "--limit", "3",
            "--batch-size", "4", "--max-new-tokens", "3", "--output", str(out)]  # fmt: skip
    assert main(args) == 0
    lines = capsys.readouterr().out.strip().splitlines()  # a table, then always a last line of JSON
    final = json.loads(lines[-1])
    assert final["task"] == "mmbench" and final["questions"] == 3 and final["prompts"] == 9
    assert [r["row"] for r in final["rows"]][0] == "all" and 0.0 <= final["accuracy"] <= 1.0
    assert any(line.startswith("all ") for line in lines)
    header, records = read_results(out)
    assert header["config"]["model"] == f"{tiny_dir.name} (float32)" and len(records) == 9
    assert header["config"]["data"].startswith("MMBench_DEV_EN.tsv ")  # name, size, hash: not the path
    for r in records:
        assert {"id", "question", "variant", "prompt", "prediction", "extracted", "rule", "correct"} <= set(r)
        assert r["correct"] == (r["extracted"] == r["answer"])
    # run again: everything is in the file already, nothing is asked, the scores are the same
    assert main([*args, "--json"]) == 0
    (line,) = capsys.readouterr().out.strip().splitlines()  # --json: only the JSON line
    again = json.loads(line)
    assert again["rows"] == final["rows"]
    assert len(read_results(out)[1]) == 9


class RecordingPipe:
    """A pipeline stand-in: answers a batch with the right letters and records each batch's prompts."""

    path = "recording"

    def __init__(self):
        self.asked: list[str] = []
        self.in_flight = None

    def chat_many(self, convs, in_flight=None, **kw):
        assert kw == {"max_new_tokens": 64, "temperature": 0.0}
        self.in_flight = in_flight
        for i, c in enumerate(convs):
            assert len(c.images) == 1 and c.cut
            self.asked.append(c.messages)
            yield i, SimpleNamespace(text=answer_colour(c.messages))


def test_local_backend_answers_every_prompt_in_one_continuous_batch(tsv):
    from owl3.evaluation.backends import LocalBackend

    pipe = RecordingPipe()
    task = MMBenchTask(tsv)
    out = run_benchmark(task, LocalBackend(pipe, batch_size=4))
    assert out.summary["accuracy"] == 1.0
    # one stream of every prompt in task order, `batch_size` of them in flight
    assert pipe.asked == [i.prompt for i in task.items()] and pipe.in_flight == 4


def test_shards_run_where_the_data_lies_elsewhere_still_merge(tsv, tmp_path, capsys):
    """Two machines keep the same TSV in different folders: their shards are one run."""
    other = tmp_path / "machine2" / tsv.name
    other.parent.mkdir()
    other.write_bytes(tsv.read_bytes())
    script = ScriptedBackend(lambda it: answer_colour(it.prompt))
    run_benchmark(MMBenchTask(tsv), script, output=tmp_path / "s1.jsonl", shard=(1, 2))
    run_benchmark(MMBenchTask(other), script, output=tmp_path / "s2.jsonl", shard=(2, 2))
    assert main(["eval", "merge", str(tmp_path / "s1.jsonl"), str(tmp_path / "s2.jsonl"), "--json"]) == 0
    assert json.loads(capsys.readouterr().out.strip().splitlines()[-1])["questions"] == 6
    # a different file of the same name is another run
    rows = mmbench_rows(6)
    rows[0]["question"] = "Something else?"
    (tmp_path / "machine3").mkdir()
    changed = write_tsv(tmp_path / "machine3" / tsv.name, rows)
    run_benchmark(MMBenchTask(changed), script, output=tmp_path / "s3.jsonl", shard=(2, 2))
    assert main(["eval", "merge", str(tmp_path / "s1.jsonl"), str(tmp_path / "s3.jsonl")]) == 2
    assert "another run" in capsys.readouterr().err


def test_shards_on_the_tiny_model_give_the_records_of_one_run(tsv, tiny_pipe, tmp_path):
    """Greedy answers do not depend on what else is in the batch: two shards answer every prompt as the
    whole run does, so the merged scores are the whole run's."""
    from owl3.evaluation.backends import LocalBackend
    from owl3.evaluation.records import merge, score_records

    def backend(b):
        return LocalBackend(tiny_pipe, batch_size=b, max_new_tokens=4)

    whole = run_benchmark(MMBenchTask(tsv), backend(8), output=tmp_path / "all.jsonl", limit=4)
    for i, b in ((1, 3), (2, 2)):
        run_benchmark(MMBenchTask(tsv), backend(b), output=tmp_path / f"s{i}.jsonl", limit=4, shard=(i, 2))
    _, records = merge([tmp_path / "s1.jsonl", tmp_path / "s2.jsonl"])
    by_id = {r["id"]: r["prediction"] for r in records}
    assert by_id == {r["id"]: r["prediction"] for r in whole.records} and len(by_id) == 11
    assert score_records("mmbench", records) == whole.summary
