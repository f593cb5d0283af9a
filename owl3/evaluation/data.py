"""Reading benchmark files in their public formats: TSV (MMBench), JSON / JSONL, parquet (lmms-lab), and
the images inside them (base64 text, bytes, or Hugging Face's {"bytes", "path"} structs).

Every failure a user can cause (missing file, wrong format, missing column) is an `Owl3Error` naming the
file and what to do. Nothing here downloads anything.
"""

from __future__ import annotations

import base64
import binascii
import csv
import hashlib
import io
import json
import sys
import threading
from pathlib import Path
from typing import Any

from PIL import Image

from owl3.errors import Owl3Error

ANSWER_LETTER = (
    "Answer with the option’s letter from the given choices directly."  # ’ as in the official code
)
LETTERS = "ABCDEFGHIJ"
_CSV_LOCK = threading.Lock()


def fingerprint(path: str | Path) -> str:
    """What identifies a benchmark's data wherever it lies: the file's name, size and a hash of its first
    and last MiB (a folder: its name and the names and sizes of its annotation files). Results files
    record it instead of a path, so shards run on machines with other folders still merge."""
    p = Path(path)
    if p.is_dir():
        files = sorted(f for f in p.rglob("*") if f.suffix in (".json", ".jsonl", ".parquet", ".tsv"))
        listing = ";".join(f"{f.relative_to(p)}:{f.stat().st_size}" for f in files)
        return f"{p.name}/ {hashlib.sha1(listing.encode()).hexdigest()[:12]}"
    size = p.stat().st_size
    h = hashlib.sha1()
    with open(p, "rb") as f:
        h.update(f.read(1 << 20))
        if size > 2 << 20:
            f.seek(size - (1 << 20))
            h.update(f.read())
    return f"{p.name} {size} {h.hexdigest()[:12]}"


def need_file(path: str | Path, what: str) -> Path:
    p = Path(path)
    if not p.is_file():
        raise Owl3Error(f"{what} {str(p)!r} not found; pass the path of the benchmark's {what}")
    return p


def read_tsv(path: str | Path) -> list[dict[str, str]]:
    """Rows of a tab-separated file with a header (as pandas writes it: quoted fields may hold tabs and
    newlines). Base64 image cells can exceed the csv module's field limit: it is raised for this read
    only and put back."""
    p = need_file(path, "TSV file")
    with _CSV_LOCK:
        old = csv.field_size_limit()
        csv.field_size_limit(sys.maxsize)
        try:
            with open(p, newline="", encoding="utf-8") as f:
                rows = list(csv.DictReader(f, delimiter="\t"))
        except (csv.Error, UnicodeDecodeError) as e:
            raise Owl3Error(f"cannot read {p} as a tab-separated file ({e})") from None
        finally:
            csv.field_size_limit(old)
    return rows


def read_table(path: str | Path) -> list[dict[str, Any]]:
    """Rows of a .json (a list, or a dict holding one), .jsonl or .parquet annotation file."""
    p = Path(path)
    if p.is_dir():
        files = sorted([*p.glob("*.parquet"), *p.glob("*.jsonl"), *p.glob("*.json")])
        if not files:
            raise Owl3Error(f"{p} holds no .parquet, .jsonl or .json annotation file; pass the file itself")
        return [row for f in files for row in read_table(f)]
    p = need_file(p, "annotation file")
    suffix = p.suffix.lower()
    try:
        if suffix == ".parquet":
            return _read_parquet(p)
        text = p.read_text(encoding="utf-8") if suffix in (".json", ".jsonl") else ""
        if suffix == ".jsonl" or (suffix == ".json" and _is_json_lines(text)):  # NLVR2's .json is lines
            return [json.loads(line) for line in text.splitlines() if line.strip()]
        if suffix == ".json":
            data = json.loads(text)
            if isinstance(data, dict):
                lists = [v for v in data.values() if isinstance(v, list)]
                data = lists[0] if len(lists) == 1 else [data]
            return list(data)
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise Owl3Error(f"{p} is not valid JSON ({e})") from None
    raise Owl3Error(f"{p}: unknown annotation format {suffix!r}; use .json, .jsonl or .parquet")


def _is_json_lines(text: str) -> bool:
    try:
        json.loads(text)
    except json.JSONDecodeError as e:
        return e.msg == "Extra data"
    return False


def _read_parquet(p: Path) -> list[dict[str, Any]]:
    try:
        import pyarrow.parquet as pq
    except ImportError:
        raise Owl3Error(
            f"reading {p.name} needs pyarrow: pip install 'owl3[eval]' (or convert it to JSONL)"
        ) from None
    try:
        return pq.read_table(p).to_pylist()
    except Exception as e:  # pyarrow raises its own error types for every kind of bad file
        raise Owl3Error(f"cannot read {p} as parquet ({e})") from None


def load_image(value: Any, where: str) -> Image.Image:
    """An RGB image from base64 text, bytes, a {"bytes": ...} struct or a path."""
    try:
        if isinstance(value, dict):
            value = value.get("bytes") or value.get("path")
        if isinstance(value, Path) or (
            isinstance(value, str) and len(value) < 1024 and Path(value).is_file()
        ):
            img = Image.open(value)
        else:
            data = value if isinstance(value, bytes) else base64.b64decode(value, validate=False)
            img = Image.open(io.BytesIO(data))
        return img.convert("RGB")
    except (OSError, ValueError, TypeError, binascii.Error):
        raise Owl3Error(f"{where}: the image cannot be decoded; check the benchmark file") from None


def options_text(choices: dict[str, str]) -> str:
    """ "A. first\\nB. second" (the official owl3 evaluation's option list)."""
    return "\n".join(f"{k}. {v}" for k, v in choices.items())


def rotate(choices: list[str], answer: int, by: int) -> tuple[dict[str, str], str]:
    """The options shifted left by `by` places (CircularEval), lettered A.., and the answer's new letter."""
    k = len(choices)
    order = [(i + by) % k for i in range(k)]
    return {LETTERS[j]: choices[i] for j, i in enumerate(order)}, LETTERS[order.index(answer)]


def blank(value: Any) -> bool:
    return value is None or (isinstance(value, float) and value != value) or str(value).strip() in ("", "nan")
