"""Frame sampling rules and PyAV decoding, on small videos written here whose frames show their own index."""

from __future__ import annotations

from pathlib import Path

import av
import numpy as np
import pytest
from PIL import Image

from owl3.errors import Owl3Error
from owl3.processing import video
from owl3.processing.video import VideoInfo, frame_indices, read_video, video_info

W, H, FPS, GOP = 64, 48, 25, 12
CODEC = "libx264" if "libx264" in av.codecs_available else "mpeg4"


def _paint(i: int) -> np.ndarray:
    """Frame i: left half's gray encodes i // 16, right half's i % 16, 16 levels apart (survives coding)."""
    img = np.empty((H, W, 3), np.uint8)
    img[:, : W // 2] = (i // 16) * 16 + 8
    img[:, W // 2 :] = (i % 16) * 16 + 8
    return img


def _index_of(frame: Image.Image) -> int:
    a = np.asarray(frame.convert("RGB"), np.float32)
    hi = a[8:-8, 4 : W // 2 - 4].mean()
    lo = a[8:-8, W // 2 + 4 : -4].mean()
    return int(round((hi - 8) / 16)) * 16 + int(round((lo - 8) / 16))


def _write(path: Path, n: int, codec: str = CODEC) -> Path:
    with av.open(str(path), "w") as out:
        stream = out.add_stream(codec, rate=FPS)
        stream.width, stream.height, stream.pix_fmt = W, H, "yuv420p"
        stream.codec_context.gop_size = GOP
        if codec == "mpeg4":
            stream.options = {"qscale": "2"}
        if codec == "libx264":  # fixed GOPs with B-frames: pts != dts, so seeking is really exercised
            params = f"keyint={GOP}:min-keyint={GOP}:scenecut=0:bframes=2"
            stream.options = {"x264-params": params, "crf": "18"}
        for i in range(n):
            frame = av.VideoFrame.from_ndarray(_paint(i), format="rgb24")
            out.mux(stream.encode(frame))
        out.mux(stream.encode())
    return path


@pytest.fixture(scope="module")
def clips(tmp_path_factory) -> dict[str, Path]:
    d = tmp_path_factory.mktemp("videos")
    # mkv and MPEG-TS store no frame count; TS also starts at pts != 0 and seeks imprecisely (no index)
    return {"short": _write(d / "short.mp4", 100), "long": _write(d / "long.mp4", 250),
            "mkv": _write(d / "noframes.mkv", 60), "ts": _write(d / "stream.ts", 120),
            "avi": _write(d / "old.avi", 80, "mpeg4")}


def test_segment_indices_hand_checked():
    assert frame_indices(100, frames=4) == [12, 37, 62, 87]  # gap 25: 12.5, 37.5, ...
    assert frame_indices(10, frames=3) == [1, 5, 8]  # gap 3.33: 1.67, 5.0, 8.33
    assert frame_indices(100) == [6, 18, 31, 43, 56, 68, 81, 93]  # default: 8 segments
    assert frame_indices(5, frames=8) == [0, 1, 2, 3, 4]  # more than there are: every frame


def test_uniform_indices_hand_checked():
    assert frame_indices(100, frames=4, sampling="uniform") == [0, 33, 66, 99]
    assert frame_indices(11, frames=3, sampling="uniform") == [0, 5, 10]
    assert frame_indices(3, frames=3, sampling="uniform") == [0, 1, 2]


def test_fps_and_max_frames():
    # 10 s at 25 fps, 1 frame per second: every 25th frame
    assert frame_indices(250, fps=1, video_fps=25) == [0, 25, 50, 75, 100, 125, 150, 175, 200, 225]
    assert frame_indices(100, fps=2, video_fps=29.97) == list(range(0, 100, 15))  # step round(14.985)
    # README: 10 one-per-second frames thinned to 4 with the segment rule over that list (gap 2.5 -> 1,3,6,8)
    assert frame_indices(250, fps=1, video_fps=25, max_frames=4) == [25, 75, 150, 200]
    assert frame_indices(250, fps=1, video_fps=25, max_frames=16) == list(range(0, 250, 25))
    assert frame_indices(100, frames=16, max_frames=4) == [12, 37, 62, 87]


@pytest.mark.parametrize("kwargs", [dict(frames=4, fps=1.0, video_fps=25), dict(frames=0), dict(frames=-2),
                                    dict(fps=0, video_fps=25), dict(fps=1.0), dict(max_frames=0),
                                    dict(sampling="random")])
def test_bad_arguments(kwargs):
    with pytest.raises(Owl3Error):
        frame_indices(100, **kwargs)


def test_video_info(clips):
    info = video_info(clips["short"])
    assert isinstance(info, VideoInfo)
    assert (info.n_frames, info.width, info.height) == (100, W, H)
    assert info.fps == pytest.approx(FPS)
    assert info.duration_s == pytest.approx(4.0, abs=0.1)


@pytest.mark.parametrize("name,n", [("mkv", 60), ("ts", 120)])
def test_video_info_counts_packets_when_container_is_silent(clips, name, n):
    with av.open(str(clips[name])) as c:
        assert c.streams.video[0].frames == 0
    info = video_info(clips[name])
    assert info.n_frames == n and info.fps == pytest.approx(FPS)


@pytest.mark.parametrize("name,kwargs", [("short", dict(frames=8)), ("short", dict(frames=30)),
                                         ("long", dict(frames=7, sampling="uniform")),
                                         ("long", dict(fps=1, max_frames=5)), ("mkv", dict(frames=60)),
                                         ("long", dict(frames=250)), ("avi", dict(frames=9)),
                                         ("ts", dict(frames=13, sampling="uniform")), ("ts", dict(fps=2))])
def test_exact_mode_returns_exactly_the_sampled_frames(clips, name, kwargs):
    path = clips[name]
    n = video_info(path).n_frames
    want = frame_indices(n, video_fps=FPS, **kwargs)
    got = read_video(path, **kwargs)
    assert all(im.mode == "RGB" and im.size == (W, H) for im in got)
    assert [_index_of(im) for im in got] == want


def _count_decodes(monkeypatch) -> list[int]:
    count = [0]
    real = video._decode

    def counting(container, stream):
        for frame in real(container, stream):
            count[0] += 1
            yield frame

    monkeypatch.setattr(video, "_decode", counting)
    return count


def test_exact_mode_seeks_instead_of_decoding_everything(clips, monkeypatch):
    count = _count_decodes(monkeypatch)
    got = read_video(clips["long"], frames=4)
    assert [_index_of(im) for im in got] == frame_indices(250, frames=4)
    # each wanted frame costs at most one GOP (plus decoder slack), far below the 250 total
    assert count[0] <= 4 * (GOP + 4) < 250


def test_exact_mode_reading_every_frame_decodes_each_once(clips, monkeypatch):
    count = _count_decodes(monkeypatch)
    got = read_video(clips["long"], frames=250)
    assert [_index_of(im) for im in got] == list(range(250))
    assert count[0] == 250  # one forward pass: no seek back at each keyframe boundary


def test_keyframe_mode_is_close_and_cheaper(clips, monkeypatch):
    want = frame_indices(250, frames=6)
    count = _count_decodes(monkeypatch)
    exact = read_video(clips["long"], frames=6)
    n_exact, count[0] = count[0], 0
    fast = read_video(clips["long"], frames=6, mode="keyframe")
    assert len(fast) == len(want)
    for w, im in zip(want, fast, strict=True):
        assert w - GOP < _index_of(im) <= w  # the keyframe at or before the wanted frame
    assert count[0] <= n_exact
    assert [_index_of(im) for im in exact] == want


def test_progress_bar(clips, capsys):
    got = read_video(clips["short"], frames=5, progress=True)
    assert len(got) == 5
    assert "5/5" in capsys.readouterr().err


def test_bad_files(tmp_path, clips):
    cut = tmp_path / "cut.mp4"  # an mp4 cut short loses its index (moov), written last
    cut.write_bytes(clips["short"].read_bytes()[:2000])
    text = tmp_path / "notes.mp4"
    text.write_text("this is not a video\n" * 20)
    empty = tmp_path / "empty.mp4"
    empty.write_bytes(b"")
    for path in (tmp_path / "missing.mp4", text, empty, cut, tmp_path):
        with pytest.raises(Owl3Error):
            read_video(path)
        with pytest.raises(Owl3Error):
            video_info(path)


def test_no_video_stream(tmp_path):
    path = tmp_path / "audio.wav"
    with av.open(str(path), "w") as out:
        stream = out.add_stream("pcm_s16le", rate=8000)
        frame = av.AudioFrame.from_ndarray(np.zeros((1, 800), np.int16), format="s16", layout="mono")
        frame.sample_rate = 8000
        out.mux(stream.encode(frame))
        out.mux(stream.encode())
    with pytest.raises(Owl3Error, match="no video stream"):
        read_video(path)


def test_bad_read_arguments(clips):
    with pytest.raises(Owl3Error, match="not both"):
        read_video(clips["short"], frames=4, fps=1)
    with pytest.raises(Owl3Error, match="mode"):
        read_video(clips["short"], mode="fastest")
