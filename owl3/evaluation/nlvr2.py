"""`owl3 eval nlvr2 --data test1.json`: NLVR2 with the official owl3 two-image prompt.

Two public formats:
- the NLVR2 release's JSON lines (`test1.json`, `dev.json`: identifier, sentence, label "True"/"False", and
  for train a `directory`), with the image pairs `{identifier minus its last -N}-img0.png` / `-img1.png` in
  --image-root (default: the JSON file's folder), or in its subfolder `directory`; rows may instead name
  their files in `left_image` / `right_image`;
- lmms-lab/NLVR2's parquet (left_image, right_image as image structs, question, answer "True"/"False"),
  the split the official owl3 evaluation reads; a folder of parquet files is read whole. Needs pyarrow.

Prompt: `Left image: <|image|> Right image: <|image|>\\n{sentence}\\nyes or no? Answer the question using a
single word.` Answers are read as yes/no (first word, else the only yes/no word); images are not cropped.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

from owl3.errors import Owl3Error
from owl3.evaluation.benchmark import Benchmark
from owl3.evaluation.data import fingerprint, load_image, read_table
from owl3.evaluation.task import Item

PROMPT = (
    "Left image: <|image|> Right image: <|image|>\n{question}\n"
    "yes or no? Answer the question using a single word."
)


def _label(value: Any, where: str) -> str:
    text = str(value).strip().lower()
    if text in ("true", "yes", "1"):
        return "yes"
    if text in ("false", "no", "0"):
        return "no"
    raise Owl3Error(f"{where}: label {value!r} is neither True nor False")


class NLVR2Task(Benchmark):
    name = "nlvr2"

    def __init__(self, data: str | Path, *, image_root: str | Path | None = None) -> None:
        self.path = Path(data)
        self.rows = read_table(self.path)
        if not self.rows:
            raise Owl3Error(f"{data} holds no questions")
        self.root = (
            Path(image_root) if image_root else (self.path if self.path.is_dir() else self.path.parent)
        )

    def config(self) -> dict[str, Any]:
        return {"data": fingerprint(self.path)}

    def _pair(self, row: dict[str, Any], where: str) -> tuple[Any, Any]:
        left, right = row.get("left_image"), row.get("right_image")
        if left is not None and right is not None:
            if isinstance(left, str) and not Path(left).is_absolute() and len(left) < 1024:
                left, right = self.root / left, self.root / right
            return left, right
        ident = row.get("identifier")
        if not ident:
            raise Owl3Error(f"{where}: no identifier and no left_image/right_image; is this NLVR2?")
        stem = ident.rsplit("-", 1)[0]
        for folder in (self.root / str(row.get("directory", "")), self.root):
            a, b = folder / f"{stem}-img0.png", folder / f"{stem}-img1.png"
            if a.is_file() and b.is_file():
                return a, b
        raise Owl3Error(f"{where}: images {stem}-img0.png / -img1.png not found under {self.root}; "
                        "pass the image folder with --image-root")  # fmt: skip

    def items(self, image_size: int | None = None) -> Iterator[Item]:
        for n, row in enumerate(self.rows):
            where = f"{self.path.name} row {n + 1}"
            qid = str(row.get("identifier") or row.get("question_id") or row.get("id") or n)
            sentence = row.get("sentence") or row.get("question")
            if sentence is None:
                raise Owl3Error(f"{where}: no sentence/question")
            answer = _label(row.get("label", row.get("answer")), where)
            pair = self._pair(row, where)
            yield Item(
                id=qid,
                group="all",
                kind=answer,
                prompt=PROMPT.format(question=str(sentence).strip()),
                answer=answer,
                media=lambda pair=pair, where=where: ([load_image(p, where) for p in pair], []),
                cut=False,
                question=qid,
                scoring="yesno",
            )
