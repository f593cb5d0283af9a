"""Inputs from the real world (issue 31): every input gets the right answer or one clear `Owl3Error`.

The media are written here: Pillow writes the 16-bit, float, EXIF-rotated, transparent and huge images,
PyAV the rotated video and the raw H.264 stream. Each table row names an input and asserts the pixels
(or the answer) it must give, or the error it must raise. Runs on the tiny fixture checkpoint.
"""

from __future__ import annotations

import base64
import json
import math
import os
import shutil
import signal
import subprocess
import sys
import textwrap
import warnings
from pathlib import Path

import av
import numpy as np
import pytest
import torch
from PIL import Image

import owl3
from owl3 import Owl3Error
from owl3.cli import main
from owl3.errors import MediaTooLarge
from owl3.processing import Processor
from owl3.processing.decode import DEFAULT_MAX_PIXELS, load_image, open_image
from owl3.processing.video import read_video
from owl3.serving.media import MediaPolicy, decode_image, decode_video

RED, BLUE, WHITE = (255, 0, 0), (0, 0, 255), (255, 255, 255)
TINY = Path(__file__).parent / "fixtures" / "official-240728-tiny"
N = dict(max_new_tokens=3)


# ---------------------------------------------------------------------------------------- media writers
def _halves(w: int = 64, h: int = 32) -> np.ndarray:
    """Left half red, right half blue: a viewer's orientation is visible at a glance."""
    a = np.zeros((h, w, 3), np.uint8)
    a[:, : w // 2] = RED
    a[:, w // 2 :] = BLUE
    return a


def _video(path: Path, n: int = 30, *, rotation: int | None = None, fmt: str | None = None,
           codec: str = "libx264", paint=None, matrix: list[int] | None = None) -> Path:
    """n frames (frame i: gray level 8*i, or `paint(i)`), optionally with a display-rotation matrix (or
    any display `matrix`: FFmpeg's 9 ints)."""
    with av.open(str(path), "w", format=fmt) as out:
        stream = out.add_stream(codec, rate=25)
        stream.width, stream.height, stream.pix_fmt = 64, 32, "yuv420p"
        if rotation is not None:
            stream.set_display_rotation(rotation)
        if matrix is not None:
            stream.set_display_matrix(matrix)
        for i in range(n):
            a = paint(i) if paint else np.full((32, 64, 3), 8 * i, np.uint8)
            for packet in stream.encode(av.VideoFrame.from_ndarray(a, format="rgb24")):
                out.mux(packet)
        for packet in stream.encode():
            out.mux(packet)
    return path


@pytest.fixture(scope="module")
def media(tmp_path_factory) -> dict[str, Path]:
    d = tmp_path_factory.mktemp("inputs")
    out: dict[str, Path] = {}
    ramp16 = (np.arange(64 * 64, dtype=np.uint32).reshape(64, 64) * 16).astype(np.uint16)  # 0..65520
    Image.fromarray(ramp16).save(out.setdefault("grey16", d / "grey16.png"))
    ramp_f = np.linspace(0.0, 1.0, 64 * 64, dtype=np.float32).reshape(64, 64)
    Image.fromarray(ramp_f, "F").save(out.setdefault("float", d / "float.tif"))
    exif = Image.Exif()
    exif[0x0112] = 6  # "rotate 90° clockwise to view": a phone held upright
    Image.fromarray(_halves()).save(out.setdefault("exif6", d / "phone.jpg"), quality=95, exif=exif)
    rgba = np.zeros((32, 64, 4), np.uint8)
    rgba[:, :32] = (*RED, 255)  # opaque red | fully transparent (black underneath)
    Image.fromarray(rgba, "RGBA").save(out.setdefault("rgba", d / "alpha.png"))
    pal = Image.fromarray(_halves()).convert("P", palette=Image.Palette.ADAPTIVE, colors=2)
    blue_index = pal.getpixel((63, 0))
    pal.save(out.setdefault("palette", d / "palette.png"), transparency=blue_index)
    _video(out.setdefault("rotated", d / "portrait.mp4"), 5, rotation=-90, paint=lambda i: _halves())
    _video(out.setdefault("h264", d / "stream.h264"), 30, fmt="h264")
    _video(out.setdefault("mp4", d / "clip.mp4"), 30)
    shutil.copy(out["h264"], out.setdefault("h264_noext", d / "stream_from_camera"))
    return out


# ---------------------------------------------------------------------------------------- pixels
def _px(img: Image.Image, x: int, y: int) -> tuple[int, ...]:
    return tuple(int(v) for v in np.asarray(img)[y, x])


def _close(a: tuple[int, ...], b: tuple[int, ...], tol: int = 24) -> bool:
    return all(abs(x - y) <= tol for x, y in zip(a, b, strict=True))


def check_grey16(img: Image.Image, official: bool) -> None:
    a = np.asarray(img)[..., 0].astype(int)
    ramp = (np.arange(64 * 64).reshape(64, 64) * 16).astype(int)
    if official:  # Pillow's convert("RGB") clips at 255: nearly everything is white
        assert (a == 255).mean() > 0.9
        return
    assert np.abs(a - np.rint(ramp / 257)).max() <= 1  # scaled, not clipped
    assert (a == 255).mean() < 0.01


def check_float(img: Image.Image, official: bool) -> None:
    a = np.asarray(img)[..., 0].astype(int)
    if official:  # floats in [0, 1] become 0 or 1 out of 255: black
        assert a.max() <= 1
        return
    ramp = np.linspace(0.0, 1.0, 64 * 64).reshape(64, 64)
    assert np.abs(a - np.rint(ramp * 255)).max() <= 1


def check_exif6(img: Image.Image, official: bool) -> None:
    if official:  # stored landscape, shown sideways
        assert img.size == (64, 32)
        return
    assert img.size == (32, 64)  # portrait, as the phone showed it: the left (red) half is on top
    assert _close(_px(img, 16, 4), RED) and _close(_px(img, 16, 60), BLUE)


def check_rgba(img: Image.Image, official: bool) -> None:
    assert _close(_px(img, 4, 4), RED, 0)
    assert _px(img, 60, 4) == ((0, 0, 0) if official else WHITE)  # transparent: on white, not black


def check_palette(img: Image.Image, official: bool) -> None:
    assert _close(_px(img, 4, 4), RED, 0)
    assert _px(img, 60, 4) == (BLUE if official else WHITE)


PIXELS = {
    "16-bit greyscale PNG": ("grey16", check_grey16),
    "32-bit float TIFF": ("float", check_float),
    "phone photo with EXIF orientation 6": ("exif6", check_exif6),
    "RGBA PNG, transparent half": ("rgba", check_rgba),
    "palette PNG with a transparent colour": ("palette", check_palette),
}


@pytest.mark.parametrize("official", [False, True], ids=["viewer", "official"])
@pytest.mark.parametrize("case", list(PIXELS))
def test_image_pixels(media, case, official):
    name, check = PIXELS[case]
    img = load_image(media[name], official=official)
    assert img.mode == "RGB"
    check(img, official)
    # the same from bytes, and in the server (one decoder for both)
    check(load_image(media[name].read_bytes(), official=official), official)
    check(decode_image(media[name].read_bytes(), "img", MediaPolicy(official_pixels=official)), official)


def test_the_pipeline_and_processor_take_the_switch(media, tiny_pipe):
    official = owl3.load(TINY, official_pixels=True)
    for pipe, is_official in ((tiny_pipe, False), (official, True)):
        enc = pipe.encode("x", images=[media["exif6"]], cut=False)
        expected = pipe.processor([{"role": "user", "content": "<|image|>\nx"}],
                                  [load_image(media["exif6"], official=is_official)], cut=False)
        assert torch.equal(enc.pixel_values, expected.pixel_values)
    a = tiny_pipe.encode("x", images=[media["exif6"]], cut=False).pixel_values
    b = official.encode("x", images=[media["exif6"]], cut=False).pixel_values
    assert not torch.equal(a, b)


def test_official_switch_changes_nothing_for_plain_rgb_images(tiny_pipe):
    """The parity fixture's images are plain RGB PNGs: both ways give the same pixels, bit for bit."""
    size = tiny_pipe.config.image_size
    ours, theirs = Processor.from_dir(TINY, size), Processor.from_dir(TINY, size, official_pixels=True)
    files = sorted((TINY / "images").glob("*.png"))
    assert files
    for f in files:
        msgs = [{"role": "user", "content": "<|image|>\nx"}]
        a, b = ours(msgs, [Image.open(f)]), theirs(msgs, [Image.open(f)])
        assert torch.equal(a.pixel_values, b.pixel_values), f.name


def test_a_dark_16_bit_image_stays_dark():
    """16-bit values that happen to be under 256 are still 16-bit: 200/65535 is black, not 200/255."""
    img = load_image(Image.fromarray(np.full((4, 4), 200, np.uint16)))
    assert _px(img, 0, 0) == (1, 1, 1)



ARRAYS = {
    "uint8 H×W×3": (lambda: _halves(), None),
    "float H×W×3 in [0, 1]": (lambda: _halves().astype(np.float32) / 255, None),
    "tensor uint8 H×W×3": (lambda: torch.from_numpy(_halves()), None),
    "tensor float H×W×3": (lambda: torch.from_numpy(_halves()).float() / 255, None),
    "tensor bfloat16 H×W×3": (lambda: (torch.from_numpy(_halves()).float() / 255).bfloat16(), None),
    "uint16 H×W×3": (lambda: _halves().astype(np.uint16) * 257, None),
    "uint8 H×W×4 (alpha 255)": (lambda: np.dstack([_halves(), np.full((32, 64), 255, np.uint8)]), None),
    "tensor C×H×W": (lambda: torch.from_numpy(_halves()).permute(2, 0, 1), r"channel-first.*permute"),
    "float out of [0, 1]": (lambda: _halves().astype(np.float32), r"outside \[0, 1\]"),
    "float NaN": (lambda: np.full((4, 4, 3), np.nan, np.float32), r"NaN"),
    "int64 array": (lambda: _halves().astype(np.int64), r"int64.*uint8"),
    "1-D array": (lambda: np.zeros(12, np.uint8), r"shape"),
}


@pytest.mark.parametrize("case", list(ARRAYS))
def test_arrays_and_tensors_as_images(case):
    make, error = ARRAYS[case]
    if error:
        with pytest.raises(Owl3Error, match=error):
            load_image(make())
        return
    img = load_image(make())
    assert img.size == (64, 32) and img.mode == "RGB"
    assert _close(_px(img, 4, 4), RED, 1) and _close(_px(img, 60, 4), BLUE, 1)


# ---------------------------------------------------------------------------------------- pixel limit
def test_pixel_limit_names_the_way_to_raise_it(media, tiny_pipe):
    with pytest.raises(MediaTooLarge, match=r"64x32 = 2048 pixels.*max_pixels"):
        tiny_pipe.encode("x", images=[media["rgba"]], max_pixels=1000)
    assert tiny_pipe.encode("x", images=[media["rgba"]], max_pixels=2048).pixel_values is not None
    with pytest.raises(MediaTooLarge, match=r"max_pixels"):  # video frames too (64x32)
        tiny_pipe.encode("x", videos=[media["mp4"]], max_pixels=1000)
    assert DEFAULT_MAX_PIXELS == __import__("owl3.options").options.DEFAULT_MAX_PIXELS  # CLI's default


def test_huge_image_is_refused_by_our_limit_and_opens_when_raised(tmp_path, capfd):
    """15000×15000 is past Pillow's decompression-bomb error (2 × 89 MP): our limit decides, not Pillow's."""
    path = tmp_path / "huge.png"
    Image.new("1", (15000, 15000), 1).save(path)  # 27 kB on disk, 225 MP
    before = Image.MAX_IMAGE_PIXELS
    with pytest.raises(MediaTooLarge, match=r"15000x15000.*max_pixels=.*--max-pixels"):
        open_image(path)
    img = open_image(path, max_pixels=None)
    assert img.size == (15000, 15000) and img.getpixel((14999, 14999)) == 255
    assert Image.MAX_IMAGE_PIXELS == before  # the process-wide setting is left alone
    del img


def test_large_image_under_the_limit_prints_no_warning(tmp_path, capfd):
    path = tmp_path / "scan.png"
    Image.new("1", (12000, 9000), 0).save(path)  # 108 MP: over Pillow's warning threshold, under ours
    capfd.readouterr()
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # any warning fails the test
        img = open_image(path)
    assert img.size == (12000, 9000)
    assert capfd.readouterr().err == ""


# ---------------------------------------------------------------------------------------- video
def test_video_rotation_is_applied_as_players_show_it(media):
    frame = read_video(media["rotated"], frames=1)[0]
    assert frame.size == (32, 64)  # stored 64x32 with a -90° display matrix: shown portrait
    assert _close(_px(frame, 16, 4), RED, 40) and _close(_px(frame, 16, 60), BLUE, 40)
    assert read_video(media["rotated"], frames=1, official=True)[0].size == (64, 32)
    data = media["rotated"].read_bytes()  # the server reads it the same way
    assert decode_video(data, "v", MediaPolicy(), frames=1, fps=None, max_frames=4)[0].size == (32, 64)


def _corner() -> np.ndarray:
    a = np.zeros((32, 64, 3), np.uint8)
    a[:12, :12] = 255  # a white top-left corner on a stored 64x32 (landscape) frame
    return a


# display matrix (a, b, c, d) -> where the stored top-left corner is shown, and the shown size, as FFmpeg's
# player shows it (fftools: turns by the matrix's rotation, then its "transpose", hflip and vflip filters)
MIRRORS = [
    ((-1, 0, 0, 1), "top right", (64, 32)),  # a left-right mirror (a front camera)
    ((1, 0, 0, -1), "bottom left", (64, 32)),  # upside down mirror
    ((-1, 0, 0, -1), "bottom right", (64, 32)),  # half turn
    ((0, -1, 1, 0), "bottom left", (32, 64)),  # quarter turn counterclockwise
    ((0, 1, -1, 0), "top right", (32, 64)),  # quarter turn clockwise
    ((0, 1, 1, 0), "top left", (32, 64)),  # "cclock_flip": across the main diagonal
    ((0, -1, -1, 0), "bottom right", (32, 64)),  # "clock_flip": across the other diagonal
]


@pytest.mark.parametrize("abcd, corner, size", MIRRORS, ids=[m[1] + str(m[2][0]) for m in MIRRORS])
def test_video_mirrors_and_turns_of_the_display_matrix_are_shown_as_players_do(tmp_path, abcd, corner, size):
    a, b, c, d = (v * 65536 for v in abcd)
    path = _video(tmp_path / "m.mp4", 2, paint=lambda i: _corner(), matrix=[a, b, 0, c, d, 0, 0, 0, 1 << 30])
    frame = read_video(path, frames=1)[0]
    assert frame.size == size
    w, h = size
    at = {"top left": (3, 3), "top right": (w - 4, 3), "bottom left": (3, h - 4)}
    for name, xy in {**at, "bottom right": (w - 4, h - 4)}.items():
        assert _close(_px(frame, *xy), (255, 255, 255) if name == corner else (0, 0, 0), 40), name
    assert read_video(path, frames=1, official=True)[0].size == (64, 32)  # the official path: as stored


@pytest.mark.parametrize("mode", ["exact", "keyframe"])
def test_raw_h264_stream_without_timestamps(media, mode):
    frames = read_video(media["h264"], frames=8, mode=mode)
    assert len(frames) == 8
    levels = [float(np.asarray(f).mean()) for f in frames]
    expected = [8 * i for i in (1, 5, 9, 13, 16, 20, 24, 28)]  # segment sampling of 30 frames
    assert all(abs(a - b) < 6 for a, b in zip(levels, expected, strict=True)), levels


# ---------------------------------------------------------------------------------------- the API
def _answer(pipe, *args, **kw) -> str:
    return pipe.chat(*args, **kw, **N)


ERRORS = {
    "images=123": (dict(images=123), r"images must be a list"),
    "videos=[b'junk']": (dict(videos=[b"not a video" * 10]), r"videos\[0\] \(110 bytes\)"),
    "videos=[a 3-D array]": (dict(videos=[np.zeros((4, 4, 3), np.uint8)]), r"T×H×W×C"),
    "frames='8'": (dict(videos=["{mp4}"], frames="8"), r"frames must be a whole number"),
    "frames=2.5": (dict(videos=["{mp4}"], frames=2.5), r"frames must be a whole number"),
    "fps=nan": (dict(videos=["{mp4}"], fps=math.nan), r"fps must be a finite number"),
    "fps=inf": (dict(videos=["{mp4}"], fps=math.inf), r"fps must be a finite number"),
    "fps on a frame list": (dict(videos=[[Image.new("RGB", (8, 8))] * 3], fps=1), r"no frame rate"),
    "seed=2**70": (dict(seed=2**70, temperature=1.0), r"seed must be a 64-bit integer"),
    "stop=[123]": (dict(stop=[123]), r"stop must be a string or a list"),
    "stop=''": (dict(stop=[""]), r"non-empty"),
    "cut='yes'": (dict(cut="yes"), r"cut must be"),
    "cut=True with a video": (dict(videos=["{mp4}"], cut=True), r"cropping is off.*video"),
    "max_pixels=0": (dict(max_pixels=0), r"max_pixels must be a positive"),
    "https image": (dict(images=["https://example.com/cat.jpg"]),
                    r"'https://example.com/cat.jpg'.*do not fetch URLs.*path"),
    "https video": (dict(videos=["https://example.com/cat.mp4"]), r"do not fetch URLs"),
    "data: URL not base64": (dict(images=["data:image/png,abc"]), r"not base64"),
    "image as a dict": (dict(images=[{"path": "x.png"}]), r"is a dict; pass a PIL image"),
}


@pytest.mark.parametrize("case", list(ERRORS))
def test_bad_inputs_are_one_clear_error(tiny_pipe, media, case):
    kw, error = ERRORS[case]
    kw = {k: ([x.format(**media) if isinstance(x, str) else x for x in v] if isinstance(v, list) else v)
          for k, v in kw.items()}
    with pytest.raises(Owl3Error, match=error):
        tiny_pipe.chat("What is it?", **kw, **N)


@pytest.mark.parametrize("where", ["prompt", "messages", "parts", "stop", "question"])
def test_lone_surrogate_is_refused(tiny_pipe, where):
    bad = "hi \ud800 there"
    with pytest.raises(Owl3Error, match=r"lone surrogate"):
        if where == "prompt":
            tiny_pipe.chat(bad, **N)
        elif where == "messages":
            tiny_pipe.chat([{"role": "user", "content": bad}], **N)
        elif where == "parts":
            tiny_pipe.chat([{"role": "user", "content": [{"type": "text", "text": bad}]}], **N)
        elif where == "stop":
            tiny_pipe.chat("hi", stop=[bad], **N)
        else:
            mem = tiny_pipe.watch([Image.new("RGB", (32, 32), "red")])
            tiny_pipe.ask(mem, bad, **N)


def test_images_as_bytes_arrays_tensors_and_data_urls_answer_as_the_file(tiny_pipe, tiny_dir):
    path = tiny_dir / "images" / "one.png"
    data = path.read_bytes()
    array = np.array(Image.open(path).convert("RGB"))
    expected = _answer(tiny_pipe, "What is it?", images=[path])
    for item in (data, array, torch.from_numpy(array), array.astype(np.float32) / 255,
                 "data:image/png;base64," + base64.b64encode(data).decode(), path.as_uri(), str(path)):
        assert _answer(tiny_pipe, "What is it?", images=[item]) == expected
    assert _answer(tiny_pipe, "What is it?", images=data) == expected  # a lone item needs no list


def test_videos_as_bytes_arrays_and_tensors(tiny_pipe, media):
    frames = tiny_pipe.load_video(media["mp4"], frames=4)
    expected = _answer(tiny_pipe, "What happens?", videos=[frames])
    assert _answer(tiny_pipe, "What happens?", videos=[media["mp4"]], frames=4) == expected
    assert _answer(tiny_pipe, "What happens?", videos=[media["mp4"].read_bytes()], frames=4) == expected
    stack = np.stack([np.asarray(f) for f in frames])  # (T, H, W, C)
    assert _answer(tiny_pipe, "What happens?", videos=[stack]) == expected
    assert _answer(tiny_pipe, "What happens?", videos=[torch.from_numpy(stack)]) == expected
    assert _answer(tiny_pipe, "What happens?", videos=[[*stack]]) == expected  # a list of arrays
    # a list of frames is sampled like a file when frames= is given
    every = tiny_pipe.load_video(media["mp4"], frames=30)
    assert _answer(tiny_pipe, "What happens?", videos=[every], frames=4) == expected


def test_raw_h264_through_the_api_and_encode(tiny_pipe, media, tmp_path, capsys):
    frames = tiny_pipe.load_video(media["h264"], frames=4)
    assert len(frames) == 4
    # `owl3 encode` tells the raw stream (no container) from an image by its content, suffix or not
    for name in ("h264", "h264_noext"):
        out = tmp_path / f"{name}.owl3"
        assert main(["encode", str(media[name]), "-o", str(out), "--frames", "4", "--model", str(TINY)]) == 0
        assert "encoded 4 views" in capsys.readouterr().err


def test_openai_style_content_parts(tiny_pipe, tiny_dir, media):
    one, wide = tiny_dir / "images" / "one.png", tiny_dir / "images" / "wide.png"
    uri = "data:image/png;base64," + base64.b64encode(wide.read_bytes()).decode()
    parts = [
        {"role": "system", "content": "Be brief."},
        {"role": "user", "content": [
            {"type": "text", "text": "Compare"},
            {"type": "image", "image": str(one)},
            {"type": "image_url", "image_url": {"url": uri}},
            {"type": "text", "text": "and"},
            {"type": "video", "video": str(media["mp4"])},
        ]},
    ]
    placeholders = [
        {"role": "system", "content": "Be brief."},
        {"role": "user", "content": "Compare\n<|image|>\n<|image|>\nand\n<|video|>"},
    ]
    expected = tiny_pipe.encode(placeholders, images=[one, wide], videos=[media["mp4"]], frames=2)
    got = tiny_pipe.encode(parts, frames=2)
    assert torch.equal(got.input_ids, expected.input_ids)
    assert torch.equal(got.pixel_values, expected.pixel_values)
    # text-only parts, and an assistant turn whose content is None (as OpenAI clients send it)
    text = [{"role": "user", "content": [{"type": "text", "text": "hi"}]},
            {"role": "assistant", "content": None}, {"role": "user", "content": "again"}]
    plain = [{"role": "user", "content": "hi"}, {"role": "assistant", "content": ""},
             {"role": "user", "content": "again"}]
    assert _answer(tiny_pipe, text) == _answer(tiny_pipe, plain)
    with pytest.raises(Owl3Error, match=r"content\[0\].*type is one of"):
        tiny_pipe.chat([{"role": "user", "content": [{"type": "input_audio", "input_audio": {}}]}])
    with pytest.raises(Owl3Error, match=r"one way"):
        tiny_pipe.chat(parts, images=[one])
    with pytest.raises(Owl3Error, match=r"do not fetch URLs"):
        tiny_pipe.chat([{"role": "user", "content": [
            {"type": "image_url", "image_url": {"url": "https://example.com/a.png"}}]}])


def test_chat_batch_takes_per_request_options(tiny_pipe):
    convs = [
        {"messages": "hello", "max_new_tokens": 2},
        {"messages": "hello", "temperature": 1.0, "seed": 3, "max_new_tokens": 5},
        owl3.Conversation("hello", extra={"max_new_tokens": 4}),
    ]
    got = tiny_pipe.chat_batch(convs, max_new_tokens=6)
    assert got == [
        tiny_pipe.chat("hello", max_new_tokens=2),
        tiny_pipe.chat("hello", temperature=1.0, seed=3, max_new_tokens=5),
        tiny_pipe.chat("hello", max_new_tokens=4),
    ]
    with pytest.raises(Owl3Error, match=r"unknown keys 'tempreature'"):
        tiny_pipe.chat_batch([{"messages": "hi", "tempreature": 1.0}])


def _short_context(tmp_path: Path, n: int) -> Path:
    ckpt = tmp_path / f"context-{n}"
    shutil.copytree(TINY, ckpt)
    cfg = json.loads((ckpt / "config.json").read_text())
    cfg["max_position_embeddings"] = n
    (ckpt / "config.json").write_text(json.dumps(cfg))
    return ckpt


def test_more_frames_than_the_context_are_refused_before_decoding(tmp_path, media):
    pipe = owl3.load(_short_context(tmp_path, 24))
    with pytest.raises(Owl3Error, match=r"gives 30 frames, more than the 24"):
        pipe.encode("x", videos=[media["mp4"]], frames=10**9)
    with pytest.raises(Owl3Error, match=r"gives 30 frames"):
        pipe.encode("x", videos=[media["mp4"]], fps=1000)
    assert len(pipe.load_video(media["mp4"], frames=10**9, max_frames=8)) == 8


def test_max_new_tokens_beyond_the_context_is_bounded_by_it(tmp_path):
    """max_new_tokens=10**9 ends at the model's context ("length") under an address-space limit of 1 GiB
    over what the loaded process holds: no allocation follows the number typed (the old engine sized
    its KV cache by prompt + max_new_tokens and died here)."""
    ckpt = _short_context(tmp_path, 96)
    script = textwrap.dedent("""
        import resource, sys
        import owl3
        pipe = owl3.load(sys.argv[1])
        vm = next(int(line.split()[1]) for line in open("/proc/self/status") if line.startswith("VmSize"))
        limit = vm * 1024 + 2**30
        resource.setrlimit(resource.RLIMIT_AS, (limit, limit))
        c = pipe.generate("Tell me everything", max_new_tokens=10**9)
        print(c.finish_reason, c.prompt_tokens + len(c.token_ids))
    """)
    proc = subprocess.run([sys.executable, "-c", script, str(ckpt)], capture_output=True, text=True,
                          timeout=300, env={**os.environ, "OMP_NUM_THREADS": "1"})
    assert proc.returncode == 0, proc.stderr[-2000:]
    reason, total = proc.stdout.split()
    assert (reason, int(total)) == ("length", 96)


# ---------------------------------------------------------------------------------------- memory files
def test_media_options_do_not_apply_to_a_memory(tiny_pipe):
    mem = tiny_pipe.watch([Image.new("RGB", (32, 32), "red")], cut=False)
    with pytest.raises(Owl3Error, match=r"frames do\(es\) not apply here.*watch / owl3 encode"):
        tiny_pipe.ask(mem, "what?", frames=4)


def test_memory_save_leaves_nothing_behind_on_failure(tiny_pipe, tmp_path):
    mem = tiny_pipe.watch([Image.new("RGB", (32, 32), "red")], cut=False)
    target = tmp_path / "already-a-folder"
    target.mkdir()
    with pytest.raises(Owl3Error, match="is a directory"):
        mem.save(target)
    blocker = tmp_path / "a-file"
    blocker.write_text("x")
    with pytest.raises(Owl3Error, match="cannot write"):
        mem.save(blocker / "sub" / "m.owl3")  # its parent cannot be made
    assert sorted(p.name for p in tmp_path.rglob("*")) == ["a-file", "already-a-folder"]
    ok = mem.save(tmp_path / "m.owl3")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a-file", "already-a-folder", "m.owl3"]
    assert tiny_pipe.ask(ok, "what?", **N).text == tiny_pipe.ask(mem, "what?", **N).text


# ---------------------------------------------------------------------------------------- command line
def _cli(capsys, *argv: str) -> tuple[int, str, str]:
    rc = main([argv[0], "--model", str(TINY), *argv[1:]])
    out, err = capsys.readouterr()
    return rc, out, err


CLI_ERRORS = {
    "--fps nan": (["generate", "hi", "--video", "{mp4}", "--fps", "nan"], ["fps must be a finite number"]),
    "--fps inf": (["generate", "hi", "--video", "{mp4}", "--fps", "inf"], ["fps"]),
    "--memory with --frames": (["generate", "hi", "--memory", "{mp4}", "--frames", "4"],
                               ["--frames does not apply with --memory", "owl3 encode"]),
    "--memory with --no-crop": (["generate", "hi", "--memory", "{mp4}", "--no-crop"], ["--no-crop"]),
    "--max-pixels too small": (["generate", "hi", "--image", "{rgba}", "--max-pixels", "100"],
                               ["2048 pixels", "--max-pixels"]),
    "URL image": (["generate", "hi", "--image", "https://example.com/cat.jpg"], ["do not fetch URLs"]),
    "encode into a folder": (["encode", "{rgba}", "-o", "{folder}"], ["is a directory"]),
}


@pytest.mark.parametrize("case", list(CLI_ERRORS))
def test_cli_errors_are_one_line_exit_2(capsys, media, tmp_path, case):
    argv, words = CLI_ERRORS[case]
    rc, out, err = _cli(capsys, *[a.format(folder=tmp_path, **media) for a in argv])
    assert rc == 2, err
    lines = err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("owl3: error: "), err
    for w in words:
        assert w in lines[0], (w, lines[0])


def test_cli_max_pixels_raised_and_max_new_tokens_huge(capsys, media, tmp_path):
    rc, out, err = _cli(capsys, "generate", "hi", "--image", str(media["rgba"]), "--max-pixels", "2048",
                        "--max-new-tokens", "3")
    assert rc == 0, err
    assert out == owl3.load(TINY).chat("hi", images=[media["rgba"]], max_new_tokens=3) + "\n"
    short = _short_context(tmp_path, 48)
    assert main(["generate", "--model", str(short), "--max-new-tokens", str(10**9), "Tell me"]) == 0
    out, err = capsys.readouterr()
    c = owl3.load(short).generate("Tell me", max_new_tokens=10**9)
    assert c.finish_reason == "length" and c.prompt_tokens + len(c.token_ids) == 48
    assert out == c.text + "\n"


# ---------------------------------------------------------------------------------------- owl3 chat
class _Args:
    """What `owl3 chat` parses, with the defaults of its options."""

    def __init__(self, **kw):
        self.system, self.image, self.video, self.cut = None, [], [], None
        self.frames = self.fps = self.max_frames = None
        self.max_pixels, self.max_new_tokens, self.temperature = DEFAULT_MAX_PIXELS, 4, 0.0
        self.top_p, self.top_k, self.repetition_penalty, self.seed = 1.0, 0, 1.0, None
        self.__dict__.update(kw)


class _Interrupting:
    """The pipeline, except that the `n`-th answer is interrupted (KeyboardInterrupt) after `after`
    pieces, as Ctrl-C does while it streams."""

    def __init__(self, pipe, n: int, after: int):
        self.pipe, self.n, self.after, self.calls = pipe, n, after, []

    def __getattr__(self, name):
        return getattr(self.pipe, name)

    def stream(self, messages, **kw):
        self.calls.append([dict(m) for m in messages])
        pieces = self.pipe.stream(messages, **kw)
        if len(self.calls) != self.n:
            return pieces

        def interrupted():
            for i, piece in enumerate(pieces):
                if i == self.after:
                    raise KeyboardInterrupt
                yield piece

        return interrupted()


def _lines(*lines):
    """A `read` that gives `lines` in order (a KeyboardInterrupt instance is raised), then EOF."""
    it = iter(lines)

    def read(prompt=""):
        line = next(it, EOFError)
        if line is EOFError or isinstance(line, BaseException):
            raise line
        return line

    return read


def test_chat_ctrl_c_stops_the_answer_and_keeps_the_conversation(tiny_pipe, capsys):
    from owl3.generate import chat_session

    pipe = _Interrupting(tiny_pipe, n=1, after=2)
    long = dict(max_new_tokens=12)
    assert chat_session(pipe, _Args(**long), _lines("tell me a story", "go on")) == 0
    out, err = capsys.readouterr()
    assert "(stopped" in err and "Traceback" not in err
    first = "".join(list(tiny_pipe.stream("tell me a story", **long))[:2])  # the two pieces shown
    assert pipe.calls[1] == [
        {"role": "user", "content": "tell me a story"},
        {"role": "assistant", "content": first},
        {"role": "user", "content": "go on"},
    ]
    assert not tiny_pipe.engine.has_unfinished  # the stopped request left the engine
    assert out == f"{first}\n{tiny_pipe.chat(pipe.calls[1], **long)}\n"


def test_chat_ctrl_c_inside_a_decode_step_leaves_the_engine_clean(tiny_pipe, capsys):
    """The interrupt lands in the middle of a model forward (a forward hook raises it, as a signal
    would there): the answer stops, and the next turn answers exactly as a fresh pipeline would."""
    from owl3.generate import chat_session

    layer = dict(tiny_pipe.model.named_modules())["language_model.model.layers.1"]
    calls = {"n": 0}

    def hook(module, inputs, output):
        calls["n"] += 1
        if calls["n"] == 5:  # prefill, then the 4th decode step
            raise KeyboardInterrupt

    handle = layer.register_forward_hook(hook)
    try:
        rc = chat_session(tiny_pipe, _Args(max_new_tokens=12), _lines("tell me a story", "go on"))
    finally:
        handle.remove()
    assert rc == 0
    out, err = capsys.readouterr()
    partial, second = out.split("\n")[:2]
    assert "(stopped; the partial answer stays" in err and "Traceback" not in err
    full = tiny_pipe.chat("tell me a story", max_new_tokens=12)
    assert partial and full.startswith(partial) and partial != full
    history = [{"role": "user", "content": "tell me a story"}, {"role": "assistant", "content": partial},
               {"role": "user", "content": "go on"}]
    assert not tiny_pipe.engine.has_unfinished
    assert second == tiny_pipe.chat(history, max_new_tokens=12)


def test_chat_real_sigint_stops_the_answer_not_the_session():
    """A real process and a real SIGINT once the answer has begun: the answer stops, the session goes on
    to the next command (here /quit), and it exits 0 (before: the session ended with code 130)."""
    # Ctrl-C raises KeyboardInterrupt as in a terminal even when the tests were started in the background
    # (a non-interactive shell starts background jobs with SIGINT ignored, and the child inherits that)
    code = (
        "import signal, sys; signal.signal(signal.SIGINT, signal.default_int_handler); "
        "from owl3.cli import main; sys.exit(main(sys.argv[1:]))"
    )
    proc = subprocess.Popen(
        [sys.executable, "-c", code, "chat", "--model", str(TINY), "--max-new-tokens", "3000"],
        stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
    )
    try:
        proc.stdin.write(b"tell me a story\n")
        proc.stdin.flush()
        assert proc.stdout.read(1)  # the answer has begun (greedy: it runs long on the tiny model)
        proc.send_signal(signal.SIGINT)
        out, err = proc.communicate(b"/quit\n", timeout=120)
    finally:
        proc.kill()
    assert proc.returncode == 0, err.decode()[-2000:]
    assert b"(stopped; the partial answer stays in the conversation)" in err
    assert b"Traceback" not in err


def test_chat_ctrl_c_at_the_prompt(tiny_pipe, capsys):
    from owl3.generate import chat_session

    # once: a hint, the session goes on; twice in a row: it ends
    assert chat_session(tiny_pipe, _Args(), _lines(KeyboardInterrupt(), "hello", KeyboardInterrupt(),
                                                  KeyboardInterrupt(), "never read")) == 0
    out, err = capsys.readouterr()
    assert "Ctrl-C again" in err
    assert out == tiny_pipe.chat("hello", max_new_tokens=4) + "\n"


def test_chat_attach_commands(tiny_pipe, tiny_dir, tmp_path, capsys):
    from owl3.generate import chat_session

    spaced = tmp_path / "my photo.png"
    shutil.copy(tiny_dir / "images" / "one.png", spaced)
    script = _lines("/image", f'/image "{spaced}"', "What is it?", "/video 'unclosed", "/image  ",
                    f"/image {spaced}", f"/image '{spaced}' \"{spaced}\"", "And these?")
    assert chat_session(tiny_pipe, _Args(), script) == 0
    out, err = capsys.readouterr()
    usage = [line for line in err.splitlines() if "/image needs a path" in line]
    assert len(usage) == 2 and "/image PATH" in usage[0]
    assert err.count(f"(attached {spaced}") == 4  # quoted, unquoted with its space, and two at once
    assert "close the quote" in err
    history = [{"role": "user", "content": "<|image|>\nWhat is it?"}]
    first = tiny_pipe.chat(history, images=[spaced], max_new_tokens=4)
    history += [{"role": "assistant", "content": first},
                {"role": "user", "content": "<|image|><|image|><|image|>\nAnd these?"}]
    second = tiny_pipe.chat(history, images=[spaced] * 4, max_new_tokens=4)
    assert out == f"{first}\n{second}\n"
