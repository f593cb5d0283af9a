"""Small training datasets over the fixture's images, shared by tests/test_train_*.py and test_build.py."""

from __future__ import annotations

import json
from pathlib import Path

FIXTURE = Path(__file__).parent / "fixtures" / "official-240728-tiny"
IMAGES = FIXTURE / "images"


def swift_records() -> list[dict]:
    """ms-swift records: one image, two images, text-only multi-turn with a system prompt, a video."""
    frames = [f"f{i}.png" for i in range(5)]
    return [
        {
            "messages": [
                {"role": "user", "content": "<image>What is this?"},
                {"role": "assistant", "content": "A red cat."},
            ],
            "images": ["one.png"],
        },
        {
            "messages": [
                {"role": "user", "content": "Compare <image> and <image>."},
                {"role": "assistant", "content": "The left one is bigger."},
            ],
            "images": ["m1.png", "m2.png"],
        },
        {
            "messages": [
                {"role": "system", "content": "Be brief."},
                {"role": "user", "content": "Hello"},
                {"role": "assistant", "content": "Hi there!"},
                {"role": "user", "content": "Bye"},
                {"role": "assistant", "content": "Goodbye."},
            ]
        },
        {
            "messages": [
                {"role": "user", "content": "<video>What happens?"},
                {"role": "assistant", "content": "A ball rolls."},
            ],
            "videos": [frames],
        },
    ]


def llava_records() -> list[dict]:
    return [
        {
            "image": "wide.png",
            "conversations": [
                {"from": "human", "value": "<image>\nDescribe the picture."},
                {"from": "gpt", "value": "A wide picture."},
            ],
        },
        {
            "image": ["m3.png", "tall.png"],
            "conversations": [
                {"from": "human", "value": "First <image>, then <image>. Which is tall?"},
                {"from": "gpt", "value": "The second."},
            ],
        },
    ]


def write_data(folder: Path) -> tuple[Path, Path]:
    """data.jsonl (ms-swift) and llava.json (LLaVA, pretty-printed over several lines). Media are bare
    file names: train with media_root=IMAGES."""
    folder.mkdir(parents=True, exist_ok=True)
    swift = folder / "data.jsonl"
    swift.write_text("".join(json.dumps(r) + "\n" for r in swift_records()))
    llava = folder / "llava.json"
    llava.write_text(json.dumps(llava_records(), indent=2))
    return swift, llava


def base_options(tmp: Path, **kw) -> dict:
    swift, llava = write_data(tmp / "data")
    opts = dict(
        model=str(FIXTURE),
        data=[str(swift), str(llava)],
        output=str(tmp / "out"),
        media_root=str(IMAGES),
        stage="sft",
        batch_size=2,
        lr=1e-3,
        threads=1,
        progress=False,
        plot=False,
        log_every=1000,
    )
    opts.update(kw)
    return opts


def write_rows(path: Path, rows: list[dict], tail: str = "") -> Path:
    """`rows` as JSON Lines (then `tail` as written), for the reader's tests."""
    path.write_text("".join(json.dumps(r) + "\n" for r in rows) + tail)
    return path


def reasons_by_line(problems) -> dict[int, str]:
    """The reader's problems as {line: reason}."""
    return {int(p.where.rsplit(":", 1)[1]): p.reason for p in problems}
