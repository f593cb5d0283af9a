"""Knowledge items to index: `{"id", "image"?, "text"?}` from a JSONL file or a folder.

A JSONL line names an image path relative to the JSONL file's folder (or absolute). A folder gives one
item per image file (id = the file name without its suffix), its text from a `.txt` file of the same
stem if there is one; `.txt` files without an image become text-only items. Images are opened when they
are embedded, so a missing or unreadable one is reported with its item's id then (`owl3 kb build`).
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

from owl3.errors import Owl3Error

IMAGE_SUFFIXES = {".png", ".jpg", ".jpeg", ".webp", ".bmp", ".gif", ".tif", ".tiff"}


@dataclass(frozen=True)
class Item:
    id: str
    image: Path | None = None
    text: str = ""


def read_items(source: str | Path) -> list[Item]:
    """The items of a JSONL file or a folder; ids must be unique and every item needs an image or text."""
    path = Path(source)
    if path.is_dir():
        items = _folder_items(path)
    elif path.is_file():
        items = _jsonl_items(path)
    else:
        raise Owl3Error(f"no such file or folder: {str(path)!r}; give a JSONL file of items or a folder")
    if not items:
        raise Owl3Error(f"{str(path)!r} holds no items (images, .txt files or JSONL lines)")
    seen: set[str] = set()
    for it in items:
        if it.id in seen:
            raise Owl3Error(f"item id {it.id!r} appears twice in {str(path)!r}; ids must be unique")
        seen.add(it.id)
    return items


def _folder_items(folder: Path) -> list[Item]:
    files = sorted(p for p in folder.iterdir() if p.is_file())
    texts = {p.stem: p for p in files if p.suffix.lower() == ".txt"}
    items = []
    for p in files:
        if p.suffix.lower() in IMAGE_SUFFIXES:
            t = texts.pop(p.stem, None)
            items.append(Item(p.stem, p, t.read_text(encoding="utf-8").strip() if t else ""))
    items += [Item(stem, None, t.read_text(encoding="utf-8").strip()) for stem, t in texts.items()]
    return sorted(items, key=lambda it: it.id)


def _jsonl_items(file: Path) -> list[Item]:
    items = []
    with file.open(encoding="utf-8") as f:
        for n, line in enumerate(f, 1):
            if not line.strip():
                continue
            try:
                row = json.loads(line)
            except json.JSONDecodeError as e:
                raise Owl3Error(f"{file}:{n}: not valid JSON ({e.msg}); one item object per line") from None
            if not isinstance(row, dict) or "id" not in row:
                raise Owl3Error(f'{file}:{n}: an item is an object with an "id" (and "image" and/or "text")')
            image, text = row.get("image"), row.get("text") or ""
            if not isinstance(text, str) or (image is not None and not isinstance(image, str)):
                raise Owl3Error(f'{file}:{n}: "image" must be a path string and "text" a string')
            if not image and not text.strip():
                raise Owl3Error(f"{file}:{n}: item {row['id']!r} has neither an image nor text")
            img = None
            if image:
                img = Path(image) if Path(image).is_absolute() else file.parent / image
            items.append(Item(str(row["id"]), img, text.strip()))
    return items
