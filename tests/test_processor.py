"""Processor tests: parity with the official fixture, crop-grid choice, template layout, user errors.

Fast, offline, CPU. The fixture folder comes from $OWL3_PARITY_FIXTURE (default: the copy in tests/).
"""

from __future__ import annotations

import copy
import json
import os
from pathlib import Path

import pytest
import torch
from PIL import Image
from safetensors.torch import load_file

from owl3.errors import Owl3Error
from owl3.processing import Processor, chat_segments, choose_grid, cut_prompt, official_media_offset

FIXTURE = Path(
    os.environ.get("OWL3_PARITY_FIXTURE", Path(__file__).parent / "fixtures" / "official-240728-tiny")
)
CASES = json.loads((FIXTURE / "cases.json").read_text())
S = CASES["image_size"]


@pytest.fixture(scope="module")
def proc() -> Processor:
    return Processor.from_dir(FIXTURE, S)


@pytest.fixture(scope="module")
def expected() -> dict[str, torch.Tensor]:
    return load_file(FIXTURE / "expected.safetensors")


def _img(name: str) -> Path:
    return FIXTURE / "images" / name


@pytest.mark.parametrize("case", CASES["cases"], ids=lambda c: c["name"])
def test_fixture_parity(proc: Processor, expected: dict[str, torch.Tensor], case: dict) -> None:
    name = case["name"]
    images = [_img(f) for f in case.get("images", [])]  # paths: exercises the file loading
    videos = [[Image.open(_img(f)) for f in case["video"]]] if "video" in case else []
    enc = proc(case["messages"], images, videos, cut=case["cut"])

    assert enc.prompt == case["prompt_text"]
    assert enc.input_ids.dtype == torch.int64
    assert enc.input_ids.tolist() == expected[f"{name}.input_ids"][0].tolist()
    assert torch.equal(official_media_offset(enc), expected[f"{name}.media_offset"][0])
    want = expected.get(f"{name}.pixel_values")
    if want is None:
        assert enc.pixel_values is None and enc.media_starts == []
    else:
        assert enc.pixel_values is not None and enc.pixel_values.dtype == torch.float32
        assert enc.pixel_values.shape == want.shape
        assert (enc.pixel_values - want).abs().max().item() <= 1e-5
        assert len(enc.media_starts) == want.shape[0]
        assert all(enc.input_ids[s].item() == proc.image_token_id for s in enc.media_starts)


def test_special_ids(proc: Processor) -> None:
    tok = proc.tokenizer
    assert proc.image_token_id == tok.token_to_id("<|image|>")
    assert proc.stop_token_ids == [tok.token_to_id("<|im_end|>"), tok.token_to_id("<|endoftext|>")]
    assert proc.pad_token_id == tok.token_to_id("<|endoftext|>")


# ---- crop-grid choice ----------------------------------------------------------------------------

GRID_LIST = [(2, 2), (1, 3), (1, 4), (3, 1), (4, 1), (2, 3), (3, 2)]


def _reference_scores(w: int, h: int, s: int) -> list[float]:
    """Straight float64 re-derivation of the official score, one grid at a time."""

    def iou(aw: int, ah: int, bw: int, bh: int) -> float:
        inter = min(aw, bw) * min(ah, bh)
        return inter / (aw * ah + bw * bh - inter + 1e-5)

    scores = []
    for rows, cols in GRID_LIST:
        aw, ah = cols * s, rows * s
        shape_h = int(h / w * aw)  # integer box in the official code
        scores.append(100 * iou(aw, ah, aw, shape_h) + iou(aw, ah, w, h))
    return scores


@pytest.mark.parametrize(
    ("w", "h", "grid"),
    [
        (100, 100, (2, 2)),  # square
        (1000, 1000, (2, 2)),
        (200, 70, (1, 3)),  # fixture wide.png
        (60, 170, (3, 1)),  # fixture tall.png
        (300, 100, (1, 3)),  # 3:1
        (100, 300, (3, 1)),
        (400, 100, (1, 4)),  # 4:1
        (100, 400, (4, 1)),
        (1000, 100, (1, 4)),  # very wide: the widest grid
        (100, 1000, (4, 1)),
        (300, 200, (2, 3)),  # 3:2
        (200, 300, (3, 2)),
        (200, 100, (2, 3)),  # 2:1 -> (2,3): shape IoU 0.75 beats (1,3)'s 0.667
        (100, 200, (3, 2)),
        (5000, 1, (1, 4)),  # degenerate: shape box height truncates to 0
    ],
)
def test_choose_grid_table(w: int, h: int, grid: tuple[int, int]) -> None:
    for s in (56, 384):
        assert choose_grid(w, h, s) == grid
        scores = _reference_scores(w, h, s)
        assert GRID_LIST[scores.index(max(scores))] == grid


def test_choose_grid_sweep_matches_reference() -> None:
    checked = 0
    for w in range(20, 2000, 37):
        for h in range(20, 2000, 41):
            for s in (56, 384):
                scores = _reference_scores(w, h, s)
                top = sorted(scores, reverse=True)
                if top[0] - top[1] < 1e-3:  # a near-tie: float32 vs float64 may legitimately differ
                    continue
                assert choose_grid(w, h, s) == GRID_LIST[scores.index(top[0])], (w, h, s)
                checked += 1
    assert checked > 5000


def test_cut_prompt_layout() -> None:
    assert cut_prompt(2, 2) == (
        "Cut to 2 rows 2 columns with a global view\n"
        "subimg(0,0)<|image|> subimg(0,1)<|image|>\nsubimg(1,0)<|image|> subimg(1,1)<|image|>\n"
        "global_view<|image|>"
    )


def test_two_cropped_images_each_get_their_own_grid(proc: Processor) -> None:
    msgs = [{"role": "user", "content": "A <|image|> B <|image|> which?"}]
    enc = proc(msgs, [_img("wide.png"), _img("tall.png")], cut=True)
    assert cut_prompt(1, 3) + " B " + cut_prompt(3, 1) in enc.prompt
    assert enc.pixel_values is not None and enc.pixel_values.shape == (8, 3, S, S)
    assert len(enc.media_starts) == 8
    wide = proc([{"role": "user", "content": "<|image|>"}], [_img("wide.png")]).pixel_values
    tall = proc([{"role": "user", "content": "<|image|>"}], [_img("tall.png")]).pixel_values
    assert torch.equal(enc.pixel_values, torch.cat([wide, tall]))


def test_cut_is_off_with_video(proc: Processor) -> None:
    frames = [Image.open(_img(f"f{i}.png")) for i in range(3)]
    msgs = [{"role": "user", "content": "<|image|> then <|video|>"}]
    enc = proc(msgs, [_img("wide.png")], [frames], cut=True)
    assert "Cut to" not in enc.prompt
    assert enc.prompt.count("<|image|>") == 4 and enc.pixel_values.shape[0] == 4


# ---- template --------------------------------------------------------------------------------------


def test_segments_follow_the_official_layout() -> None:
    msgs = [
        {"role": "user", "content": "hi <|image|>"},
        {"role": "assistant", "content": "yes"},
        {"role": "user", "content": "and?"},
    ]
    assert chat_segments(msgs) == [
        "<|im_start|>system\n<|im_end|>",
        "\n<|im_start|>user\nhi <|image|><|im_end|>",
        "\n<|im_start|>assistant\n",
        "yes<|im_end|>",
        "<|endoftext|>",
        "\n<|im_start|>user\nand?<|im_end|>",
        "\n<|im_start|>assistant\n",  # a last user message gets the generation header
    ]
    assert chat_segments(msgs + [{"role": "assistant", "content": ""}]) == chat_segments(msgs)


def test_tokenized_segment_by_segment(proc: Processor) -> None:
    msgs = [{"role": "user", "content": "x"}, {"role": "assistant", "content": " \n  spaced"}]
    enc = proc(msgs)
    want: list[int] = []
    for seg in chat_segments(msgs):
        want += proc.tokenizer.encode(seg, add_special_tokens=False).ids
    assert enc.input_ids.tolist() == want
    assert proc.render(msgs) == enc.prompt


def test_messages_not_mutated(proc: Processor) -> None:
    msgs = [
        {"role": "system", "content": "sys"},
        {"role": "user", "content": "<|image|> and <|video|>"},
        {"role": "assistant", "content": ""},
    ]
    before = copy.deepcopy(msgs)
    proc(msgs, [_img("wide.png")], [[Image.open(_img("f0.png"))]])
    proc(msgs[:2], [_img("wide.png")], [[Image.open(_img("f0.png"))]], cut=False)
    assert msgs == before


# ---- user errors -----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("content", "n_images", "n_videos", "needle"),
    [
        ("<|image|> <|image|>", 1, 0, "2 <|image|> placeholder(s) but 1 image(s)"),
        ("no media", 1, 0, "0 <|image|> placeholder(s) but 1 image(s)"),
        ("<|video|>", 0, 0, "1 <|video|> placeholder(s) but 0 video(s)"),
        ("<|image|>", 1, 1, "0 <|video|> placeholder(s) but 1 video(s)"),
    ],
)
def test_placeholder_count_mismatch(proc: Processor, content: str, n_images: int, n_videos: int, needle: str):
    images = [_img("one.png")] * n_images
    videos = [[Image.open(_img("f0.png"))]] * n_videos
    with pytest.raises(Owl3Error, match=needle.replace("|", r"\|").replace("(", r"\(").replace(")", r"\)")):
        proc([{"role": "user", "content": content}], images, videos)


def test_missing_and_corrupt_image_files(proc: Processor, tmp_path: Path) -> None:
    msgs = [{"role": "user", "content": "<|image|>"}]
    missing = tmp_path / "nope.png"
    with pytest.raises(Owl3Error, match="nope.png"):
        proc(msgs, [missing])
    corrupt = tmp_path / "broken.png"
    corrupt.write_bytes(b"\x89PNG\r\n\x1a\n this is not really a png")
    with pytest.raises(Owl3Error, match="broken.png"):
        proc(msgs, [str(corrupt)])
    truncated = tmp_path / "truncated.png"
    truncated.write_bytes(_img("one.png").read_bytes()[:200])
    with pytest.raises(Owl3Error, match="truncated.png"):
        proc(msgs, [truncated])


def test_bad_arguments(proc: Processor, tmp_path: Path) -> None:
    msgs = [{"role": "user", "content": "<|image|>"}]
    with pytest.raises(Owl3Error, match="wrap it in a list"):
        proc(msgs, _img("one.png"))  # type: ignore[arg-type]
    with pytest.raises(Owl3Error, match="role"):
        proc([{"role": "tool", "content": "x"}])
    with pytest.raises(Owl3Error, match="empty"):
        proc([])
    with pytest.raises(Owl3Error, match="no frames"):
        proc([{"role": "user", "content": "<|video|>"}], videos=[[]])
    with pytest.raises(Owl3Error, match="tokenizer.json"):
        Processor.from_dir(tmp_path, S)
    (tmp_path / "tokenizer.json").write_text("{not json")
    with pytest.raises(Owl3Error, match="tokenizer.json"):
        Processor.from_dir(tmp_path, S)
