"""Small benchmark files in each public format, built by the tests: an MMBench TSV (base64 PNGs; with or
without VLMEvalKit's circular rows, whose images refer to the main row), NLVR2 JSON lines + PNG pairs (and
the lmms-lab parquet when pyarrow is there), and Video-MME / MVBench / LongVideoBench folders with tiny
videos written by PyAV; plus a scripted backend that answers from the prompt."""

from __future__ import annotations

import base64
import csv
import io
import json
import re
from pathlib import Path

from PIL import Image

COLOURS = ["red", "green", "blue", "yellow", "purple", "orange", "white", "black", "cyan", "pink", "brown"]
RGB = {"red": (220, 30, 30), "green": (30, 200, 30), "blue": (30, 30, 220), "yellow": (230, 230, 40),
       "purple": (140, 40, 160), "orange": (250, 140, 20), "white": (250, 250, 250), "black": (5, 5, 5),
       "cyan": (40, 220, 220), "pink": (250, 150, 200), "brown": (120, 70, 20)}  # fmt: skip


def png(colour: str, size: int = 40) -> bytes:
    buf = io.BytesIO()
    Image.new("RGB", (size, size), RGB[colour]).save(buf, format="PNG")
    return buf.getvalue()


def b64(data: bytes) -> str:
    return base64.b64encode(data).decode()


def mmbench_rows(n: int = 6) -> list[dict]:
    """n questions "What colour is the square?" on images of distinct colours; question i has 2 + i % 3
    options; every third has no hint; categories cycle over two, l2-categories over three."""
    rows = []
    for i in range(n):
        colour = COLOURS[i]
        k = 2 + i % 3
        wrong = [c for c in COLOURS if c != colour][i % 5 : i % 5 + k - 1]
        options = wrong[: i % k] + [colour] + wrong[i % k :]
        row = {"index": i, "question": f"What colour is the square number {i}?",
               "hint": "" if i % 3 == 0 else f"Hint {i}: look closely.",
               "answer": "ABCD"[options.index(colour)], "category": ["colour", "shape"][i % 2],
               "l2-category": ["perception", "reasoning", "knowledge"][i % 3], "image": b64(png(colour)),
               "split": "dev"}  # fmt: skip
        for j, letter in enumerate("ABCD"):
            row[letter] = options[j] if j < len(options) else ""
        rows.append(row)
    return rows


def circular_rows(rows: list[dict]) -> list[dict]:
    """VLMEvalKit's layout: for each question with k options, k-1 more rows (index + r * 1e6) with the
    options rotated by r, the answer moved with them, and the image given as the main row's index."""
    out = list(rows)
    for row in rows:
        opts = [row[c] for c in "ABCD" if row[c]]
        k = len(opts)
        for r in range(1, k):
            rot = opts[r:] + opts[:r]
            new = {**row, "index": row["index"] + r * 1_000_000, "image": str(row["index"])}
            for j, letter in enumerate("ABCD"):
                new[letter] = rot[j] if j < k else ""
            new["answer"] = "ABCD"[rot.index(row[row["answer"]])]
            out.append(new)
    return out


def write_tsv(path: Path, rows: list[dict]) -> Path:
    cols = ["index", "question", "hint", "A", "B", "C", "D", "answer", "category", "l2-category", "image",
            "split"]  # fmt: skip
    with open(path, "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=cols, delimiter="\t")
        w.writeheader()
        for r in rows:
            w.writerow(r)
    return path


def answer_colour(prompt: str) -> str:
    """What a perfect model would answer: the letter of the option naming the asked image's colour (the
    tests' questions say which square; the fixture puts colour i on question i)."""
    m = re.search(r"square number (\d+)", prompt)
    colour = COLOURS[int(m.group(1))]
    for letter, text in re.findall(r"(?m)^(?:Options: )?([A-J])\. (.+)$", prompt):
        if text == colour:
            return letter
    return "Z"


class ScriptedBackend:
    """Answers each prompt with script(item) and remembers what it was asked."""

    name = "scripted"

    def __init__(self, script):
        self.script = script
        self.asked: list = []

    def answer(self, items):
        for item in items:
            self.asked.append(item)
            yield item, self.script(item)


def write_nlvr2(folder: Path, n: int = 4) -> Path:
    """NLVR2 JSON lines (dev.json) with identifier dev-{i}-0-{j} and the image pair dev-{i}-0-img0/1.png."""
    folder.mkdir(parents=True, exist_ok=True)
    lines = []
    for i in range(n):
        left, right = COLOURS[i], COLOURS[(i + i % 2) % len(COLOURS)]
        (folder / f"dev-{i}-0-img0.png").write_bytes(png(left))
        (folder / f"dev-{i}-0-img1.png").write_bytes(png(right))
        label = "True" if left == right else "False"
        lines.append({"identifier": f"dev-{i}-0-{i % 2}", "sentence": "Both images show the same colour.",
                      "label": label, "left_url": "", "right_url": "", "synset": "colour"})  # fmt: skip
    path = folder / "dev.json"
    path.write_text("".join(json.dumps(x) + "\n" for x in lines))
    return path


def write_nlvr2_parquet(path: Path, n: int = 4) -> Path:
    import pyarrow as pa
    import pyarrow.parquet as pq

    rows = []
    for i in range(n):
        left, right = COLOURS[i], COLOURS[(i + i % 2) % len(COLOURS)]
        rows.append({"question_id": f"q{i}", "question": "Both images show the same colour.",
                     "answer": "True" if left == right else "False",
                     "left_image": {"bytes": png(left), "path": f"{left}.png"},
                     "right_image": {"bytes": png(right), "path": f"{right}.png"}})  # fmt: skip
    pq.write_table(pa.Table.from_pylist(rows), path)
    return path


def write_video(path: Path, n_frames: int = 24, size: int = 32, fps: int = 8) -> Path:
    """n grey frames of brightness 10 * frame number: a frame's number can be read back from it."""
    import av
    import numpy as np

    path.parent.mkdir(parents=True, exist_ok=True)
    with av.open(str(path), "w") as out:
        stream = out.add_stream("mpeg4", rate=fps)
        stream.width = stream.height = size
        stream.pix_fmt = "yuv420p"
        stream.options = {"qscale": "1"}
        for i in range(n_frames):
            a = np.full((size, size, 3), min(255, 10 * i), np.uint8)
            out.mux(stream.encode(av.VideoFrame.from_ndarray(a, format="rgb24")))
        out.mux(stream.encode())
    return path


def frame_number(img) -> int:
    """The frame number write_video drew into a frame."""
    import numpy as np

    return int(round(float(np.asarray(img.convert("RGB"))[..., 0].mean()) / 10))
