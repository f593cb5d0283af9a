"""The video benchmarks from their public layouts with tiny PyAV videos whose frames carry their own frame
number: Video-MME (parquet and JSON), MVBench (bounded, unbounded and JPEG-folder tasks) and
LongVideoBench; the official prompts, the official frame plans, and each command on the tiny model."""

from __future__ import annotations

import json

import pytest
from PIL import Image

from owl3.cli import main
from owl3.evaluation.benchmark import run_benchmark
from owl3.evaluation.longvideobench import LongVideoBenchTask
from owl3.evaluation.mvbench import MVBenchTask, bounded_indices
from owl3.evaluation.videomme import VideoMMETask
from tests.eval_helpers import ScriptedBackend, frame_number, write_video

TAIL = "Answer with the option’s letter from the given choices directly."


@pytest.fixture(scope="module")
def videomme(tmp_path_factory):
    root = tmp_path_factory.mktemp("videomme")
    rows = []
    for i, (duration, ttype) in enumerate([("short", "Counting Problem"), ("medium", "OCR Problems"),
                                           ("long", "Counting Problem")]):  # fmt: skip
        write_video(root / "data" / f"vid{i}.mp4")
        rows.append({"video_id": f"{i:03d}", "duration": duration, "domain": "Knowledge",
                     "sub_category": "Astronomy", "url": "", "videoID": f"vid{i}",
                     "question_id": f"{i:03d}-1", "task_type": ttype,
                     "question": f"How many squares are there in clip {i}?",
                     "options": ["A. one", "B. two", "C. three", "D. four"],
                     "answer": "ABCD"[i]})  # fmt: skip
    (root / "videomme").mkdir()
    import pyarrow as pa
    import pyarrow.parquet as pq

    pq.write_table(pa.Table.from_pylist(rows), root / "videomme" / "test-00000-of-00001.parquet")
    (root / "videomme.json").write_text(json.dumps(rows))
    return root


def test_videomme_prompt_frames_and_rows(videomme):
    task = VideoMMETask(videomme / "videomme" / "test-00000-of-00001.parquet", video_root=videomme / "data",
                        frames=4)  # fmt: skip
    items = list(task.items())
    assert [i.id for i in items] == ["000-1", "001-1", "002-1"]
    assert items[0].prompt == (
        "<|video|>\nQuestion: How many squares are there in clip 0?\n"
        f"Options: A. one\nB. two\nC. three\nD. four\n{TAIL}"
    )
    images, videos = items[0].media()
    assert images == [] and [frame_number(f) for f in videos[0]] == [3, 9, 15, 21]  # middles of 4 segments
    out = run_benchmark(task, ScriptedBackend(lambda it: f"({it.answer})"))
    rows = {r["row"]: r["questions"] for r in out.summary["rows"]}
    assert out.summary["accuracy"] == 1.0
    assert rows == {"all": 3, "duration: short": 1, "duration: medium": 1, "duration: long": 1,
                    "task type: Counting Problem": 2, "task type: OCR Problems": 1}  # fmt: skip
    # the same rows as JSON, the video folder found beside the annotations
    same = list(VideoMMETask(videomme / "videomme.json", frames=4).items())
    assert [i.prompt for i in same] == [i.prompt for i in items]


@pytest.fixture(scope="module")
def mvbench(tmp_path_factory):
    root = tmp_path_factory.mktemp("mvbench")
    write_video(root / "video" / "star" / "Charades_v1_480" / "a.mp4")
    write_video(root / "video" / "perception" / "videos" / "b.mp4")
    folder = root / "video" / "tvqa" / "frames_fps3_hq" / "clip1"
    folder.mkdir(parents=True)
    for i in range(1, 13):  # 4 s at 3 fps, numbered from 1
        Image.new("RGB", (16, 16), (10 * i, 128, 0)).save(folder / f"{i:05d}.jpg", quality=100)
    (root / "json").mkdir()
    entry = {"question": "What did the person do first?", "candidates": ["sat down", "stood up", "ran"]}
    (root / "json" / "action_sequence.json").write_text(
        json.dumps([{**entry, "video": "a.mp4", "answer": "stood up", "start": 0.5, "end": 2.5}])
    )
    (root / "json" / "object_shuffle.json").write_text(
        json.dumps([{**entry, "video": "b.mp4", "answer": "ran"}])
    )
    (root / "json" / "episodic_reasoning.json").write_text(json.dumps(
        [{**entry, "video": "clip1", "answer": "sat down", "start": 1.0, "end": 3.0}]))  # fmt: skip
    return root


def test_mvbench_official_frame_rule():
    # 24 frames at 8 fps, bound [0.5 s, 2.5 s]: frames 4..20 in 4 segments of 4, middles rounded as upstream
    assert bounded_indices(4, 8.0, 23, (0.5, 2.5)) == [6, 10, 14, 18]
    assert bounded_indices(4, 8.0, 23, None) == [2, 8, 14, 19]
    assert bounded_indices(4, 3.0, 12, (1.0, 3.0), first=1) == [3, 5, 6, 7]  # round(4.5) == 4, as np.round


def test_mvbench_layout_prompts_and_bounds(mvbench):
    task = MVBenchTask(mvbench, frames=4)
    items = {i.group: i for i in task.items()}
    assert list(items) == ["action_sequence", "object_shuffle", "episodic_reasoning"]  # the official order
    seq = items["action_sequence"]
    assert seq.prompt == (
        "<|video|>\nQuestion: What did the person do first?\n"
        "Options:\nA. sat down\nB. stood up\nC. ran\n" + TAIL
    )
    assert seq.answer == "B" and seq.meta["bound"] == [0.5, 2.5]
    assert [frame_number(f) for f in seq.media()[1][0]] == [6, 10, 14, 18]
    assert [frame_number(f) for f in items["object_shuffle"].media()[1][0]] == [2, 8, 14, 19]
    frames = items["episodic_reasoning"].media()[1][0]
    assert [round(f.getpixel((8, 8))[0] / 10) for f in frames] == [3, 5, 6, 7]
    out = run_benchmark(task, ScriptedBackend(lambda it: "A" if it.group != "object_shuffle" else "C. ran"))
    rows = {r["row"]: r["accuracy"] for r in out.summary["rows"]}
    assert rows == {"all": round(2 / 3, 4), "task: action_sequence": 0.0, "task: object_shuffle": 1.0,
                    "task: episodic_reasoning": 1.0}  # fmt: skip


@pytest.fixture(scope="module")
def lvb(tmp_path_factory):
    root = tmp_path_factory.mktemp("lvb")
    write_video(root / "videos" / "x1.mp4")
    entries = [{"id": "86CxyhFV9MI_0", "video_path": "x1.mp4", "duration": 3.0, "duration_group": 15,
                "question": "What colour is the square?", "question_category": "S2E",
                "candidates": ["green", "red"], "correct_choice": 1, "subtitle_path": "x1.json"}]  # fmt: skip
    (root / "lvb_val.json").write_text(json.dumps(entries))
    return root


def test_longvideobench_prompt_and_frames(lvb):
    (item,) = LongVideoBenchTask(lvb, frames=4).items()
    assert item.prompt == (
        f"Question: <|video|>\nWhat colour is the square?\nOptions: A. green\nB. red\n{TAIL}"
    )
    assert item.answer == "B" and item.rows == ("duration: 15", "category: S2E")
    assert [frame_number(f) for f in item.media()[1][0]] == [3, 9, 15, 21]


@pytest.mark.parametrize("task", ["videomme", "mvbench", "longvideobench"])
def test_video_commands_end_to_end_on_the_tiny_model(
    task, videomme, mvbench, lvb, tiny_dir, tmp_path, capsys
):
    data = {"videomme": videomme / "videomme.json", "mvbench": mvbench, "longvideobench": lvb}[task]
    out = tmp_path / "V.jsonl"
    args = ["eval", task, "--data", str(data), "--model", str(tiny_dir), "--frames", "3",
            "--max-new-tokens", "2", "--output", str(out), "--json"]  # fmt: skip
    assert main(args) == 0
    final = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    n = {"videomme": 3, "mvbench": 3, "longvideobench": 1}[task]
    assert final["task"] == task and final["questions"] == final["prompts"] == n
    header = json.loads(out.read_text().splitlines()[0])
    assert header["config"]["frames"] == 3


def test_missing_video_is_a_clear_error(videomme, tmp_path, capsys):
    rows = json.loads((videomme / "videomme.json").read_text())
    rows[0]["videoID"] = "nope"
    (tmp_path / "v.json").write_text(json.dumps(rows))
    assert main(["eval", "videomme", "--data", str(tmp_path / "v.json"), "--video-root",
                 str(videomme / "data")]) == 2  # fmt: skip
    err = capsys.readouterr().err.strip()
    assert "'nope' not found" in err and "--video-root" in err and "\n" not in err
