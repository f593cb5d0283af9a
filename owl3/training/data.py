"""Training data readers: LLaVA JSON and ms-swift JSONL, into one `Record` type, with line numbers.

- LLaVA: a JSON list (or JSONL) of `{"image": str | [str], "video": ..., "conversations":
  [{"from": "human" | "gpt" | "system", "value": "<image>\\n..."}]}`.
- ms-swift: JSONL of `{"messages": [{"role", "content"}], "images": [...], "videos": [...]}`.
The format is told per record by its keys, so both may sit in one file. Either may carry `"attend"`
(grounding targets for the attention loss, see `Attend`). `<image>` / `<video>` tags (or
owl3's own `<|image|>` / `<|video|>`) mark where the media go, in order. A video is a video file, a
folder of frame images, or a list of frame image paths.

Checks that need no decoding happen here (structure, tag counts, files present, no chat-template tokens in
the text); each problem names `file:line`. Decoding, cropping and the length limit are `encode.py`'s job.
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

from owl3.errors import Owl3Error
from owl3.processing.chat import END_OF_TEXT, IM_END, IM_START

IMAGE, VIDEO = "<|image|>", "<|video|>"
TAGS = {"<image>": IMAGE, "<video>": VIDEO}
RESERVED = (IM_START, IM_END, END_OF_TEXT)
LLAVA_ROLES = {
    "human": "user",
    "user": "user",
    "gpt": "assistant",
    "assistant": "assistant",
    "system": "system",
}
IMAGE_SUFFIXES = {".png", ".jpg", ".jpeg", ".webp", ".bmp", ".gif", ".tif", ".tiff"}

Video = str | tuple[str, ...]  # a video file or frame folder, or the frame files of one video


@dataclass(frozen=True)
class Attend:
    """Where the answer should look: when answer `turn` (0: the first) has been written up to `after` (a
    prefix of it, "" = its start), the position that predicts the next token should attend to

    - `box` (x0, y0, x1, y1, fractions of the width and height) of image `image` (0-based, in the record's
      order), or of frame `frame` of video `video` (among the frames training samples), through the hyper
      layers' cross-attention: `{"image": 0, "box": [0, 0, 0.5, 0.5], "after": "The square is in the"}`
      (`{"video": 0, "frame": 3, ...}` for a video); `"boxes": [[...], [...]]` instead of `"box"` asks for
      the union of several boxes (e.g. every empty part of a picture, for an answer that says "there is
      none"); or
    - the `next_tokens` prompt tokens right after that image's (or video's last frame's) `<|image|>` token,
      through one decoder layer's self-attention: `{"image": 2, "next_tokens": 4, "after": "The star is"}`.
      Those tokens take in the image through the first hyper layer; attending to them is how a question
      about "Image 3" can carry image 3's content to the answer (docs/training.md, "Attention targets").

    A box target may name another query instead of a place in an answer: `"query": "after_image"` (and no
    "after") asks the prompt token right after that image's `<|image|>` token to look at the box, e.g. when
    the question stands before the images and each image's next token should read its answer there.

    A text target may name a phrase of the prompt instead of the tokens after an image: `{"text": "Image 3",
    "after": "The star is"}` asks the answer's position to attend to the last token of the phrase's last
    occurrence before it (the question's "Image 3": the number of the asked image, which the answer must
    carry to find that image's tokens), and `{"image": 2, "text": "Image 3", "query": "after_image"}` asks
    the token right after image 2 to attend to it (the label before the image: that token then knows which
    image it follows). Any text target may add `"layer": L`, the decoder layer (0-based) whose
    self-attention it supervises (default: the training's `text_attention_layer`), and `"heads": [h, ...]`,
    the query heads whose look it asks for (default: all, the loss averaged over them).

    A box target may add `"odds": w` (> 0): instead of all of the look on the box, a share spread over the
    whole picture (or frame), each patch in the box taking w times the share of any patch outside it (the
    loss: cross-entropy against that distribution). The share on the box then grows with how much of the
    picture the box covers, e.g. with how many objects the boxes hold: a look that can count, where an
    all-on-the-box look gives one object and two the same average.

    Used by the training option `attention_loss_weight`."""

    image: int | None
    box: tuple[float, float, float, float] | None
    after: str
    video: int | None = None
    frame: int = 0
    next_tokens: int = 0  # > 0: a text target (self-attention), `box` None
    boxes: tuple[tuple[float, float, float, float], ...] = ()  # a union of boxes instead of `box` (None)
    turn: int = 0  # the answer `after` belongs to: 0 the first, 1 the second (multi-turn records) ...
    query: str = "answer"  # "after_image": the query is the token right after the image, `after` unused
    odds: float = 0.0  # > 0: a share spread over the picture, w times as much per patch in the box (above)
    text: str = ""  # a text target on this phrase's last token (its last occurrence before the query)
    layer: int | None = None  # text targets: the decoder layer whose self-attention (None: the training's)
    heads: tuple[int, ...] = ()  # text targets: the query heads whose look is supervised (empty: all)


@dataclass(frozen=True)
class Record:
    """One training conversation, media paths resolved, placeholders in owl3 form."""

    source: str
    line: int  # 1-based line where the record starts
    messages: tuple[dict[str, str], ...]
    images: tuple[str, ...] = ()
    videos: tuple[Video, ...] = ()
    attend: tuple[Attend, ...] = ()

    @property
    def where(self) -> str:
        return f"{self.source}:{self.line}"


@dataclass(frozen=True)
class Problem:
    where: str
    reason: str

    def __str__(self) -> str:
        return f"{self.where}: {self.reason}"


class BadRecord(Exception):
    """Raised inside the parser for one record; becomes a `Problem`."""


def read_data(
    paths: Sequence[str | os.PathLike], media_root: str | None = None
) -> tuple[list[Record], list[Problem]]:
    """All good records of the files, in order, and the problems of the bad ones."""
    records: list[Record] = []
    problems: list[Problem] = []
    for path in paths:
        file = Path(path)
        if not file.is_file():
            raise Owl3Error(f"data file {str(file)!r} not found")
        root = Path(media_root) if media_root else file.parent
        for line, raw in _raw_records(file):
            where = f"{file}:{line}"
            try:
                if isinstance(raw, BadRecord):
                    raise raw
                records.append(parse_record(raw, str(file), line, root))
            except BadRecord as e:
                problems.append(Problem(where, str(e)))
    return records, problems


def _raw_records(file: Path) -> Iterator[tuple[int, Any]]:
    """(line, object) per record: a JSON list (one element per record) or JSON Lines."""
    text = file.read_text(encoding="utf-8")
    stripped = text.lstrip()
    if file.suffix == ".json" and stripped.startswith("["):
        yield from _json_list(text, file)
        return
    for i, line in enumerate(text.splitlines(), start=1):
        if not line.strip():
            continue
        try:
            yield i, json.loads(line)
        except json.JSONDecodeError as e:
            yield i, BadRecord(f"not valid JSON ({e.msg})")


def _json_list(text: str, file: Path) -> Iterator[tuple[int, Any]]:
    """Elements of a top-level JSON array with the line each starts on (json.load loses them)."""
    dec = json.JSONDecoder()
    pos = text.index("[") + 1
    line = 1 + text.count("\n", 0, pos)
    n = len(text)
    while True:
        while pos < n and text[pos] in " \t\r\n,":
            if text[pos] == "\n":
                line += 1
            pos += 1
        if pos >= n:
            raise Owl3Error(f"{file}: the JSON list is not closed with ']'")
        if text[pos] == "]":
            return
        try:
            obj, end = dec.raw_decode(text, pos)
        except json.JSONDecodeError as e:
            raise Owl3Error(f"{file}:{e.lineno}: not valid JSON ({e.msg}); fix the file") from None
        yield line, obj
        line += text.count("\n", pos, end)
        pos = end


def parse_record(raw: Any, source: str, line: int, root: Path) -> Record:
    if not isinstance(raw, dict):
        raise BadRecord(f"a sample must be a JSON object, got {type(raw).__name__}")
    if "conversations" in raw:
        messages = _llava_messages(raw["conversations"])
        images = _list(raw.get("image", raw.get("images")), "image")
        videos = _list(raw.get("video", raw.get("videos")), "video")
    elif "messages" in raw:
        messages = _swift_messages(raw["messages"])
        images = _list(raw.get("images"), "images")
        videos = _list(raw.get("videos"), "videos")
    else:
        raise BadRecord('neither "conversations" (LLaVA) nor "messages" (ms-swift) is present')
    messages = [{"role": m["role"], "content": _to_owl3_tags(m["content"])} for m in messages]
    _check_messages(messages)
    n_img = sum(m["content"].count(IMAGE) for m in messages)
    n_vid = sum(m["content"].count(VIDEO) for m in messages)
    if n_img != len(images) or n_vid != len(videos):
        raise BadRecord(
            f"tags do not match media: {n_img} <image> tag(s) for {len(images)} image(s), "
            f"{n_vid} <video> tag(s) for {len(videos)} video(s)"
        )
    return Record(
        source,
        line,
        tuple(messages),
        tuple(_image_path(p, root) for p in images),
        tuple(_video(v, root) for v in videos),
        _attend(raw.get("attend"), messages, len(images), len(videos)),
    )


def _attend(value: Any, messages: list[dict[str, str]], n_images: int, n_videos: int) -> tuple[Attend, ...]:
    if value is None:
        return ()
    if not isinstance(value, list):
        raise BadRecord(f'"attend" must be a list of targets: {_ATTEND_FORMS}')
    answers = [m["content"] for m in messages if m["role"] == "assistant"]
    out = []
    for i, a in enumerate(value):
        keys = set(a) - {"turn", "odds", "layer", "heads"} if isinstance(a, dict) else set()
        odds = _odds(a, keys, i) if isinstance(a, dict) and "odds" in a else 0.0
        layer = _layer(a, keys, i) if isinstance(a, dict) and "layer" in a else None
        heads = _heads(a, keys, i) if isinstance(a, dict) and "heads" in a else ()
        if keys in ({"image", "box", "query"}, {"image", "boxes", "query"}, {"image", "text", "query"}):
            out.append(replace(_after_image(a, i, n_images), odds=odds, layer=layer, heads=heads))
            continue
        if keys not in _ATTEND_KEYS:
            raise BadRecord(f"attend[{i}] must be one of {_ATTEND_FORMS}")
        turn = a.get("turn", 0)
        if not _index(turn, len(answers)):
            last = len(answers) - 1
            raise BadRecord(f"attend[{i}].turn must be an answer index in 0..{last}, got {turn!r}")
        answer, after = answers[turn], a["after"]
        if not isinstance(after, str) or not answer.startswith(after):
            raise BadRecord(f"attend[{i}].after must be the start of answer {turn}, got {after!r}")
        if keys == {"text", "after"}:
            out.append(
                Attend(None, None, after, text=_phrase(a["text"], i), turn=turn, layer=layer, heads=heads)
            )
            continue
        medium, count = ("image", n_images) if "image" in keys else ("video", n_videos)
        index = a[medium]
        if not _index(index, count):
            raise BadRecord(f"attend[{i}].{medium} must be a {medium} index in 0..{count - 1}, got {index!r}")
        if "frame" in keys and not _index(a["frame"], 1 << 30):
            raise BadRecord(f"attend[{i}].frame must be a frame index >= 0, got {a['frame']!r}")
        image, video = (index, None) if medium == "image" else (None, index)
        if "next_tokens" in keys:
            n = a["next_tokens"]
            if not _index(n, 1 << 30) or n == 0:
                raise BadRecord(f"attend[{i}].next_tokens must be a token count >= 1, got {n!r}")
            out.append(Attend(image, None, after, video, next_tokens=n, turn=turn, layer=layer, heads=heads))
            continue
        if "boxes" in keys:
            union = _union(a["boxes"], i)
            frame = a.get("frame", 0)
            out.append(Attend(image, None, after, video, frame, boxes=union, turn=turn, odds=odds))
            continue
        box = _box(a["box"], f"attend[{i}].box")
        out.append(Attend(image, box, after, video, a.get("frame", 0), turn=turn, odds=odds))
    return tuple(out)


def _odds(a: dict, keys: set[str], i: int) -> float:
    """The checked "odds" of target i: a number > 0, on a box target only."""
    w = a["odds"]
    if isinstance(w, bool) or not isinstance(w, (int, float)) or not w > 0 or w == float("inf"):
        raise BadRecord(f"attend[{i}].odds must be a number > 0, got {w!r}")
    if not keys & {"box", "boxes"}:
        raise BadRecord(f'attend[{i}].odds needs a "box" or "boxes" target')
    return float(w)


def _layer(a: dict, keys: set[str], i: int) -> int:
    """The checked "layer" of target i: a decoder layer index >= 0, on a text target only."""
    layer = a["layer"]
    if not _index(layer, 1 << 30):
        raise BadRecord(f"attend[{i}].layer must be a decoder layer index >= 0, got {layer!r}")
    if not keys & {"next_tokens", "text"}:
        raise BadRecord(f'attend[{i}].layer needs a text target ("next_tokens" or "text")')
    return layer


def _heads(a: dict, keys: set[str], i: int) -> tuple[int, ...]:
    """The checked "heads" of target i: distinct query head indices >= 0, on a text target only."""
    heads = a["heads"]
    if not isinstance(heads, list) or not heads or not all(_index(h, 1 << 30) for h in heads):
        raise BadRecord(f"attend[{i}].heads must be a non-empty list of head indices >= 0, got {heads!r}")
    if len(set(heads)) != len(heads):
        raise BadRecord(f"attend[{i}].heads names a head twice: {heads!r}")
    if not keys & {"next_tokens", "text"}:
        raise BadRecord(f'attend[{i}].heads needs a text target ("next_tokens" or "text")')
    return tuple(heads)


def _phrase(text: Any, i: int) -> str:
    if not isinstance(text, str) or not text.strip():
        raise BadRecord(f"attend[{i}].text must be a non-empty phrase of the prompt, got {text!r}")
    return text


def _after_image(a: dict, i: int, n_images: int) -> Attend:
    """`{"image": int, "box" or "boxes" or "text": ..., "query": "after_image"}`: the token after the image
    looks."""
    if a["query"] != "after_image":
        raise BadRecord(f'attend[{i}].query must be "after_image", got {a["query"]!r}')
    if not _index(a["image"], n_images):
        raise BadRecord(f"attend[{i}].image must be an image index in 0..{n_images - 1}, got {a['image']!r}")
    if "text" in a:
        return Attend(a["image"], None, "", text=_phrase(a["text"], i), query="after_image")
    if "box" in a:
        return Attend(a["image"], _box(a["box"], f"attend[{i}].box"), "", query="after_image")
    return Attend(a["image"], None, "", boxes=_union(a["boxes"], i), query="after_image")


def _union(boxes: Any, i: int) -> tuple[tuple[float, float, float, float], ...]:
    """The checked boxes of target i's "boxes"."""
    if not isinstance(boxes, list) or not boxes:
        raise BadRecord(f"attend[{i}].boxes must be a non-empty list [x0, y0, x1, y1], got {boxes!r}")
    return tuple(_box(b, f"attend[{i}].boxes[{j}]") for j, b in enumerate(boxes))


def _box(box: Any, where: str) -> tuple[float, float, float, float]:
    ok = isinstance(box, list) and len(box) == 4 and all(isinstance(x, (int, float)) for x in box)
    if not ok or not (0 <= box[0] < box[2] <= 1 and 0 <= box[1] < box[3] <= 1):
        raise BadRecord(f"{where} must be [x0, y0, x1, y1] with 0 <= x0 < x1 <= 1, got {box!r}")
    return (float(box[0]), float(box[1]), float(box[2]), float(box[3]))


_ATTEND_KEYS = (
    {"image", "box", "after"},
    {"video", "frame", "box", "after"},
    {"image", "boxes", "after"},
    {"video", "frame", "boxes", "after"},
    {"image", "next_tokens", "after"},
    {"video", "next_tokens", "after"},
    {"text", "after"},
)
_ATTEND_FORMS = (
    '{"image": int, "box": [x0, y0, x1, y1], "after": str} ("video" and "frame" for "image"; "boxes": '
    '[[x0, y0, x1, y1], ...] for "box": their union), or '
    '{"image": int, "next_tokens": int, "after": str} ("video" for "image"); any of them may add "turn": '
    'int, the answer that "after" starts (0, the first, by default); or {"image": int, "box": [x0, y0, x1, '
    'y1], "query": "after_image"} ("boxes" for "box"): the token right after the image looks there; a box '
    'target may add "odds": number > 0 (a share spread over the picture, that many times as much per patch '
    'in the box); or {"text": str, "after": str} or {"image": int, "text": str, "query": "after_image"}: '
    'the answer (or the token right after the image) looks at the phrase\'s last token; a text target '
    '("next_tokens" or "text") may add "layer": int, the decoder layer whose self-attention it supervises, '
    'and "heads": [int, ...], the query heads that should look (default all)'
)


def _index(value: Any, count: int) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and 0 <= value < count


def _llava_messages(conv: Any) -> list[dict[str, str]]:
    if not isinstance(conv, list) or not conv:
        raise BadRecord('"conversations" must be a non-empty list')
    out = []
    for i, turn in enumerate(conv):
        if not isinstance(turn, dict) or "from" not in turn or "value" not in turn:
            raise BadRecord(f'conversations[{i}] must be {{"from": ..., "value": ...}}')
        role = LLAVA_ROLES.get(str(turn["from"]).lower())
        if role is None:
            raise BadRecord(f'conversations[{i}] has "from": {turn["from"]!r}; use human, gpt or system')
        if not isinstance(turn["value"], str):
            raise BadRecord(f"conversations[{i}].value must be a string")
        out.append({"role": role, "content": turn["value"]})
    return out


def _swift_messages(msgs: Any) -> list[dict[str, str]]:
    if not isinstance(msgs, list) or not msgs:
        raise BadRecord('"messages" must be a non-empty list')
    out = []
    for i, m in enumerate(msgs):
        if not isinstance(m, dict) or "role" not in m or "content" not in m:
            raise BadRecord(f'messages[{i}] must be {{"role": ..., "content": ...}}')
        if m["role"] not in ("system", "user", "assistant"):
            raise BadRecord(f"messages[{i}] has role {m['role']!r}; use system, user or assistant")
        if not isinstance(m["content"], str):
            raise BadRecord(f"messages[{i}].content must be a string")
        out.append({"role": m["role"], "content": m["content"]})
    return out


def _to_owl3_tags(text: str) -> str:
    for tag, placeholder in TAGS.items():
        text = text.replace(tag, placeholder)
    return text


def _check_messages(messages: list[dict[str, str]]) -> None:
    for i, m in enumerate(messages):
        for token in RESERVED:
            if token in m["content"]:
                raise BadRecord(f"message {i} contains the chat-template token {token}; remove it")
        if m["role"] == "system" and i != 0:
            raise BadRecord(f"message {i} is a system message; only the first message may be one")
        if m["role"] == "assistant":
            if not m["content"].strip():
                raise BadRecord(f"message {i} is an empty assistant answer")
            if IMAGE in m["content"] or VIDEO in m["content"]:
                raise BadRecord(f"message {i}: image/video tags inside an assistant answer are not supported")
    if not any(m["role"] == "assistant" for m in messages):
        raise BadRecord("no assistant answer to learn from")


def _list(value: Any, key: str) -> list[Any]:
    if value is None:
        return []
    if isinstance(value, (str, dict)):
        return [value]
    if isinstance(value, list):
        return value
    raise BadRecord(f'"{key}" must be a path or a list of paths, got {type(value).__name__}')


def _path(item: Any, root: Path, what: str) -> str:
    if isinstance(item, dict) and isinstance(item.get("path"), str):  # ms-swift {"path": ...}
        item = item["path"]
    if not isinstance(item, str) or not item:
        raise BadRecord(f"{what} must be a file path, got {item!r}")
    if item.startswith(("http://", "https://", "data:")):
        raise BadRecord(f"{what} {item[:60]!r} is not a local file; download the media first")
    p = Path(item).expanduser()
    return str(p if p.is_absolute() else root / p)


def _image_path(item: Any, root: Path) -> str:
    path = _path(item, root, "image")
    if not os.path.isfile(path):
        raise BadRecord(f"image not found: {path}")
    return path


def _video(item: Any, root: Path) -> Video:
    if isinstance(item, list):  # the frames of one video
        if not item:
            raise BadRecord("a video given as a list of frames has no frames")
        return tuple(_image_path(f, root) for f in item)
    path = _path(item, root, "video")
    if os.path.isdir(path):
        if not frame_files(path):
            raise BadRecord(f"video folder {path} holds no image files")
    elif not os.path.isfile(path):
        raise BadRecord(f"video not found: {path}")
    return path


def frame_files(folder: str) -> list[str]:
    """Image files of a frame folder, in name order."""
    return sorted(str(p) for p in Path(folder).iterdir() if p.suffix.lower() in IMAGE_SUFFIXES)
