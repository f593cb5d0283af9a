"""Video decoding and frame sampling with PyAV: which frames to keep, and getting exactly those frames.

`frame_indices` is a pure function holding the official sampling rules (middle frame of N equal segments;
the README's one-frame-per-second thinned to MAX_NUM_FRAMES). `read_video` decodes them to RGB PIL images,
seeking to keyframes instead of decoding whole long videos. Frame i means the i-th frame in presentation
order, as decord (used by the official code) numbers them. This is not a general media library: no audio,
no streaming inputs, no resizing (that is the image transform's job).
"""

from __future__ import annotations

import bisect
import itertools
import math
import numbers
import os
import sys
import tempfile
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import av
import numpy as np
from av.container import InputContainer
from av.sidedata.sidedata import Type as SideDataType
from av.video.frame import VideoFrame
from av.video.stream import VideoStream
from PIL import Image
from tqdm import tqdm

from owl3.errors import MediaTooLarge, Owl3Error
from owl3.processing.decode import local_path, to_rgb

DEFAULT_FRAMES = 8  # the official evaluation's default frame count
SAMPLINGS = ("segment", "uniform")
MODES = ("exact", "keyframe")
SEEK_COST = 4  # a seek (demuxer reposition + decoder flush) priced in decoded frames


@dataclass(frozen=True)
class VideoInfo:
    n_frames: int
    fps: float
    duration_s: float
    width: int
    height: int


def _sample(items: list[int], n: int, sampling: str) -> list[int]:
    """Pick n of items: the middle of n equal segments, or evenly spaced including both ends."""
    if n >= len(items):
        return list(items)
    if sampling == "segment":
        gap = len(items) / n
        return [items[int(i * gap + gap / 2)] for i in range(n)]
    return [items[int(j)] for j in np.round(np.linspace(0, len(items) - 1, n))]


def check_sampling(frames: object = None, fps: object = None, max_frames: object = None
                   ) -> tuple[int | None, float | None, int | None]:
    """Validate the sampling options a user typed: counts are positive integers, a rate a finite positive
    number, not both. Returns them as (int, float, int)."""
    if frames is not None and fps is not None:
        raise Owl3Error("pass either frames (a count) or fps (a rate), not both")
    for name, value in (("frames", frames), ("max_frames", max_frames)):
        if value is None:
            continue
        if isinstance(value, bool) or not isinstance(value, numbers.Integral):
            raise Owl3Error(f"{name} must be a whole number of frames, got {value!r}; e.g. {name}=8")
        if value <= 0:
            raise Owl3Error(f"{name} must be a positive count, got {value}")
    if fps is not None:
        if isinstance(fps, bool) or not isinstance(fps, numbers.Real):
            raise Owl3Error(f"fps must be a number of frames per second, got {fps!r}; e.g. fps=1")
        if not math.isfinite(fps) or fps <= 0:
            raise Owl3Error(f"fps must be a finite number > 0, got {fps!r}; e.g. fps=1 (a frame per second)")
    return (None if frames is None else int(frames), None if fps is None else float(fps),
            None if max_frames is None else int(max_frames))


def frame_indices(n_total: int, *, frames: int | None = None, fps: float | None = None,
                  video_fps: float | None = None, max_frames: int | None = None,
                  sampling: str = "segment") -> list[int]:
    """Indices of the frames to keep out of n_total, ascending.

    By count (`frames`, default 8): "segment" takes int(i*gap + gap/2) with gap = n_total/frames (the
    official rule); "uniform" takes round(linspace(0, n_total-1, frames)). By rate (`fps`, the README uses
    1): every round(video_fps/fps)-th frame from 0; if that is more than `max_frames`, it is thinned with
    `sampling` (segment by default, as in the README). `max_frames` also caps a count.
    """
    if n_total <= 0:
        raise Owl3Error(f"the video has {n_total} frames; pass a video with at least one frame")
    if sampling not in SAMPLINGS:
        raise Owl3Error(f"unknown sampling {sampling!r}; use one of {', '.join(SAMPLINGS)}")
    frames, fps, max_frames = check_sampling(frames, fps, max_frames)
    everything = list(range(n_total))
    if fps is None:
        n = frames if frames is not None else DEFAULT_FRAMES
        if max_frames is not None:
            n = min(n, max_frames)
        return _sample(everything, n, sampling)
    if video_fps is None or video_fps <= 0:
        raise Owl3Error("sampling by fps needs the video's frame rate (video_fps > 0); pass frames instead")
    step = max(1, round(video_fps / fps))
    picked = everything[::step]
    if max_frames is not None and len(picked) > max_frames:
        picked = _sample(picked, max_frames, sampling)
    return picked


@contextmanager
def _open(path: str | Path) -> Iterator[tuple[InputContainer, VideoStream]]:
    """Open a video file and its first video stream, turning every way that fails into an Owl3Error."""
    p = local_path(path, "the video")
    if p.is_dir():
        raise Owl3Error(f"{p} is a directory; pass the path of a video file")
    if not p.is_file():
        raise Owl3Error(f"video file not found: {p}; check the path")
    if p.stat().st_size == 0:
        raise Owl3Error(f"video file is empty: {p}; pass a real video (mp4, mkv, webm, avi, ...)")
    try:
        container = av.open(str(p))
    except (av.FFmpegError, OSError) as e:
        raise Owl3Error(f"cannot read {p} as a video ({e}); pass a valid video file") from e
    with container:
        if not container.streams.video:
            raise Owl3Error(f"{p} has no video stream; pass a file that contains video")
        stream = container.streams.video[0]
        try:
            yield container, stream
        except av.FFmpegError as e:
            raise Owl3Error(f"failed to decode {p} ({e}); the file may be corrupt or truncated") from e


def _decode(container: InputContainer, stream: VideoStream) -> Iterator[VideoFrame]:
    """Decode frames of one stream from the container's current position (the one place that decodes)."""
    yield from container.decode(stream)


def _rate(stream: VideoStream) -> float | None:
    for rate in (stream.average_rate, stream.guessed_rate, stream.base_rate):
        if rate:
            return float(rate)
    return None


def _packet_index(container: InputContainer, stream: VideoStream) -> tuple[list[int], list[int]]:
    """Demux (no decoding) once: every timed frame's pts in presentation order, and the keyframes' pts."""
    pts, keys, _ = _packet_scan(container, stream)
    return pts, keys


def _packet_scan(container: InputContainer, stream: VideoStream) -> tuple[list[int], list[int], int]:
    """`_packet_index`, and the count of packets without any timestamp (a raw .h264/.hevc stream has only
    those)."""
    pts: list[int] = []
    keys: list[int] = []
    untimed = 0
    for packet in container.demux(stream):
        if packet.size == 0:  # the flush packet at end of stream
            continue
        ts = packet.pts if packet.pts is not None else packet.dts
        if ts is None:
            untimed += 1
            continue
        pts.append(ts)
        if packet.is_keyframe:
            keys.append(ts)
    pts.sort()
    keys.sort()
    return pts, keys, untimed


def video_info(path: str | Path) -> VideoInfo:
    """Frame count, rate, duration and size; frames are counted by demuxing when the container is silent."""
    with _open(path) as (container, stream):
        if not stream.frames:
            pts, _, untimed = _packet_scan(container, stream)
        n = stream.frames or len(pts) + untimed
        tb = stream.time_base
        if stream.duration is not None and tb is not None:
            duration = float(stream.duration * tb)
        elif container.duration is not None:
            duration = container.duration / av.time_base
        else:
            duration = 0.0
        fps = _rate(stream) or (n / duration if duration > 0 else 0.0)
        if duration <= 0 and fps > 0:
            duration = n / fps
        return VideoInfo(n, fps, duration, stream.codec_context.width, stream.codec_context.height)


def frame_image(frame: VideoFrame, official: bool = False) -> Image.Image:
    """A decoded frame as an RGB PIL image, turned and mirrored by the stream's display matrix as players
    show it (a phone's portrait video is stored landscape with a display matrix); `official`: as stored."""
    img = frame.to_image()
    if official:
        return img
    turn = _display_transpose(frame)
    return img.transpose(turn) if turn is not None else img


T = Image.Transpose
# A display matrix maps a stored pixel (p, q) (x right, y down) to (a p + c q, b p + d q) on screen. Its
# axis-aligned cases, (a, b, c, d) in units, are the eight turns and mirrors, as FFmpeg's player shows
# them: e.g. (0, -1, 1, 0) is a quarter turn counterclockwise, (-1, 0, 0, 1) a left-right mirror.
_DISPLAY = {
    (1, 0, 0, 1): None,
    (-1, 0, 0, 1): T.FLIP_LEFT_RIGHT,
    (1, 0, 0, -1): T.FLIP_TOP_BOTTOM,
    (-1, 0, 0, -1): T.ROTATE_180,
    (0, -1, 1, 0): T.ROTATE_90,
    (0, 1, -1, 0): T.ROTATE_270,
    (0, 1, 1, 0): T.TRANSPOSE,
    (0, -1, -1, 0): T.TRANSVERSE,
}
_TURNS = {1: T.ROTATE_90, 2: T.ROTATE_180, 3: T.ROTATE_270}  # counterclockwise quarter turns


def _display_transpose(frame: VideoFrame) -> Image.Transpose | None:
    """The turn or mirror of `frame`'s display matrix (None: as stored). A matrix that is not
    axis-aligned (a 30-degree tilt, or scaled) is taken to the quarter turn nearest its rotation."""
    for data in frame.side_data:
        if data.type == SideDataType.DISPLAYMATRIX and len(raw := bytes(data)) >= 20:
            a, b, _, c, d = np.frombuffer(raw[:20], dtype=np.int32).tolist()  # native, as FFmpeg
            key = tuple(round(v / 65536) for v in (a, b, c, d))  # 16.16 fixed point
            near = all(abs(v - k * 65536) < 656 for v, k in zip((a, b, c, d), key, strict=True))
            if near and key in _DISPLAY:
                return _DISPLAY[key]
            break
    try:
        quarter = round(frame.rotation / 90) % 4
    except (AttributeError, ValueError, TypeError):
        return None
    return _TURNS.get(quarter)


def _seek(container: InputContainer, stream: VideoStream, target: int, tries: Iterable[int]
          ) -> Iterator[VideoFrame]:
    """Frames decoded from the first seek in `tries` (timestamps, latest first) that starts by `target`.

    Demuxers without an index (MPEG-TS) can land past the keyframe, where nothing decodes until the next
    one; backing off fixes that. The last try is taken as it is.
    """
    frames: Iterator[VideoFrame] = iter(())
    first = None
    for ts in tries:
        try:
            container.seek(ts, stream=stream, backward=True)
        except av.FFmpegError:  # e.g. AVI refuses some timestamps; try the next one
            continue
        frames = _decode(container, stream)
        first = next(frames, None)
        if first is not None and first.pts is not None and first.pts <= target:
            break
    return _chain(first, frames)


def _chain(first: VideoFrame | None, rest: Iterator[VideoFrame]) -> Iterator[VideoFrame]:
    if first is not None:
        yield first
    yield from rest


def _read_exact(container: InputContainer, stream: VideoStream, want: list[int], pts: list[int],
                keys: list[int], bar: tqdm, official: bool = False) -> dict[int, Image.Image]:
    """Decode the exact frames want (ascending, unique), identified by pts.

    Cost is counted in decoded frames. Before each wanted frame, seek iff the last keyframe at or before
    the target lies more than SEEK_COST frames past the last decoded frame: decoding from that keyframe
    is then cheaper than decoding forward from here. So frames within a GOP of each other cost one
    forward pass, and distant ones at most one GOP each, however long the video.
    """
    home = min(stream.start_time or 0, 0)  # seeking to 0 (or below the start) reliably rewinds
    out: dict[int, Image.Image] = {}
    frames: Iterator[VideoFrame] | None = None
    current: int | None = None  # pts of the last decoded frame
    last: VideoFrame | None = None
    for i in want:
        target = pts[i]
        k = bisect.bisect_right(keys, target) - 1  # the last keyframe at or before the target
        if frames is None or current is None or current >= target or (
                k >= 0 and bisect.bisect_left(pts, keys[k]) - bisect.bisect_right(pts, current) >= SEEK_COST):
            # try that keyframe, then earlier ones (see _seek), then the very start
            tries = itertools.chain((keys[j] for j in range(k, -1, -1)), [home])
            frames = _seek(container, stream, target, tries)
            last = None
        for frame in frames:
            last = frame
            current = frame.pts if frame.pts is not None else current
            if current is not None and current >= target:
                break
        # a frame past the target (or the last one, at a broken tail) means the target was undecodable
        if last is None:
            raise Owl3Error(f"frame {i} could not be decoded; the video may be truncated or corrupt")
        out[i] = frame_image(last, official)
        bar.update(1)
    return out


def _read_keyframes(container: InputContainer, stream: VideoStream,
                    want: list[int], fps: float, bar: tqdm, official: bool = False
                    ) -> dict[int, Image.Image]:
    """Approximate: for each wanted time, seek to the keyframe before it and take the first decoded frame."""
    tb = stream.time_base
    start = stream.start_time or 0
    second = max(1, int(1 / tb))

    def tries(target: int) -> Iterator[int]:  # the target, then 1, 3, 7, ... seconds before it, then 0
        back = 0
        while target - back > start:
            yield target - back
            back = 2 * back + second
        yield min(start, 0)

    out: dict[int, Image.Image] = {}
    for i in want:
        target = start + int(i / fps / tb)
        frame = next(_seek(container, stream, target, tries(target)), None)
        if frame is None:
            raise Owl3Error(f"no frame decodes near frame {i}; the video may be truncated or corrupt")
        out[i] = frame_image(frame, official)
        bar.update(1)
    return out


def _read_in_order(container: InputContainer, stream: VideoStream, want: list[int], bar: tqdm,
                   official: bool) -> dict[int, Image.Image]:
    """Decode from the start and keep the wanted frames by their place in decoding order: the only way
    through a stream without timestamps (no seeking). A frame lost at a broken tail is replaced by the
    last frame that decoded."""
    wanted, out = set(want), {}
    last: VideoFrame | None = None
    for n, frame in enumerate(_decode(container, stream)):
        last = frame
        if n in wanted:
            out[n] = frame_image(frame, official)
            bar.update(1)
        if n >= want[-1]:
            break
    if last is None:
        raise Owl3Error("no frame of the video decodes; the file may be corrupt or truncated")
    for i in want:
        if i not in out:
            out[i] = frame_image(last, official)
            bar.update(1)
    return out


def read_video(path: str | Path, *, frames: int | None = None, fps: float | None = None,
               max_frames: int | None = None, sampling: str = "segment", mode: str = "exact",
               progress: bool = False, max_pixels: int | None = None, official: bool = False,
               max_count: int | None = None) -> list[Image.Image]:
    """Sample frames from a video file (see `frame_indices`) and return them as RGB PIL images.

    mode="exact" returns exactly the frames at those indices (one demux pass to index the packets, then
    keyframe seeks plus decoding forward). mode="keyframe" is fast and approximate: each wanted time gives
    the keyframe at or before it, so frames close together may repeat. A stream without timestamps (raw
    H.264/HEVC) is decoded from the start in either mode. Frames are turned by the rotation metadata
    unless `official`; a frame size over `max_pixels` is refused (`MediaTooLarge`) before decoding, and
    so is a sampling that gives more than `max_count` frames (e.g. more than a model's context holds).
    """
    if mode not in MODES:
        raise Owl3Error(f"unknown mode {mode!r}; use one of {', '.join(MODES)}")
    frames, fps, max_frames = check_sampling(frames, fps, max_frames)
    if _is_animated_webp(path):  # FFmpeg decodes no animated WebP: Pillow does
        return _read_animated(path, frames=frames, fps=fps, max_frames=max_frames, sampling=sampling,
                              max_pixels=max_pixels, official=official, max_count=max_count)
    with _open(path) as (container, stream):
        _check_frame_size(path, stream.codec_context.width, stream.codec_context.height, max_pixels)
        rate = _rate(stream)
        untimed = 0
        if mode == "exact":
            stream.thread_type = "AUTO"  # long forward decodes gain from frame threads; keyframe mode doesn't
            pts, keys, untimed = _packet_scan(container, stream)
            n_total = len(pts) + untimed
        else:
            tb = stream.time_base
            n_total = stream.frames
            if not n_total and rate and stream.duration is not None and tb is not None:
                n_total = round(float(stream.duration * tb) * rate)
            if not n_total:
                pts, keys, untimed = _packet_scan(container, stream)
                n_total = len(pts) + untimed
        if n_total == 0:
            raise Owl3Error(f"{path} contains no video frames; pass a video with content")
        indices = _sample_checked(path, n_total, rate, frames, fps, max_frames, sampling, max_count)
        want = sorted(set(indices))
        with tqdm(total=len(want), disable=not progress, file=sys.stderr, desc="video frames",
                  unit="frame") as bar:
            if untimed:  # no timestamps to seek by (nor to rewind): decode in order from a fresh start
                with _open(path) as (again, again_stream):
                    got = _read_in_order(again, again_stream, want, bar, official)
            elif mode == "exact":
                got = _read_exact(container, stream, want, pts, keys, bar, official)
            else:
                if not rate:
                    raise Owl3Error(f"{path} does not state a frame rate; use mode='exact'")
                got = _read_keyframes(container, stream, want, rate, bar, official)
    return [got[i] for i in indices]


def _is_animated_webp(path: str | Path) -> bool:
    """An animated WebP (a RIFF WEBP file with an ANIM chunk), which FFmpeg's WebP decoder cannot read."""
    try:
        with open(local_path(path, "the video"), "rb") as f:
            head = f.read(64)
    except OSError:
        return False  # _open says what is wrong with the path
    return head[:4] == b"RIFF" and head[8:12] == b"WEBP" and b"ANIM" in head


def _read_animated(path: str | Path, *, frames: int | None, fps: float | None, max_frames: int | None,
                   sampling: str, max_pixels: int | None, official: bool, max_count: int | None
                   ) -> list[Image.Image]:
    """`read_video` for an animated image through Pillow: the frame rate from the frames' durations (read
    only when sampling by `fps`), frames with transparency on white (as `load_image` shows an image), the
    same limits."""
    p = local_path(path, "the video")
    try:
        with Image.open(p) as img:
            n_total = getattr(img, "n_frames", 1)
            _check_frame_size(path, *img.size, max_pixels)
            rate = None
            if fps is not None:
                durations = []
                for i in range(n_total):
                    img.seek(i)
                    img.load()  # a WebP frame's duration is known once it is read
                    durations.append(float(img.info.get("duration") or 0))
                rate = 1000 / float(np.median(durations)) if np.median(durations) > 0 else None
            indices = _sample_checked(path, n_total, rate, frames, fps, max_frames, sampling, max_count)
            got = {}
            for i in sorted(set(indices)):
                img.seek(i)
                frame = img.convert("RGBA")
                got[i] = frame.convert("RGB") if official else to_rgb(frame)
    except (OSError, ValueError, EOFError, SyntaxError) as e:
        raise Owl3Error(f"failed to decode {p} ({e}); the file may be corrupt or truncated") from None
    return [got[i] for i in indices]


def _check_frame_size(path: str | Path, w: int, h: int, max_pixels: int | None) -> None:
    if max_pixels is not None and w * h > max_pixels:
        raise MediaTooLarge(
            f"the video {path} has {w}x{h} = {w * h} pixels per frame, over the limit of {max_pixels}; "
            "raise it with max_pixels=... (--max-pixels N) if you mean it",
            width=w, height=h, limit=max_pixels,
        )


def _sample_checked(path: str | Path, n_total: int, rate: float | None, frames: int | None,
                    fps: float | None, max_frames: int | None, sampling: str, max_count: int | None
                    ) -> list[int]:
    """`frame_indices`, refused when they are more than `max_count` (what the model's context holds)."""
    indices = frame_indices(n_total, frames=frames, fps=fps, video_fps=rate, max_frames=max_frames,
                            sampling=sampling)
    if max_count is not None and len(indices) > max_count:
        raise Owl3Error(
            f"sampling {path} gives {len(indices)} frames, more than the {max_count} the model's context "
            "holds (each frame takes a prompt token); ask for fewer (frames=N, or max_frames=N with fps)"
        )
    return indices


def read_frames(path: str | Path, indices: list[int]) -> list[Image.Image]:
    """The frames at `indices` (presentation order, as decord numbers them; repeats allowed), for callers
    with their own sampling rule (e.g. a benchmark's official one); indices past the end are clamped."""
    with _open(path) as (container, stream):
        stream.thread_type = "AUTO"
        pts, keys = _packet_index(container, stream)
        if not pts:
            raise Owl3Error(f"{path} contains no video frames; pass a video with content")
        clamped = [min(max(int(i), 0), len(pts) - 1) for i in indices]
        with tqdm(total=0, disable=True) as bar:
            got = _read_exact(container, stream, sorted(set(clamped)), pts, keys, bar)
    return [got[i] for i in clamped]


@contextmanager
def video_file(source: str | os.PathLike | bytes) -> Iterator[str | os.PathLike]:
    """A path PyAV can open: paths as they are, the bytes of a video file through a temporary file that
    is removed afterwards (PyAV demuxes files; some containers need to seek)."""
    if not isinstance(source, (bytes, bytearray, memoryview)):
        yield source
        return
    if len(source) == 0:
        raise Owl3Error("the video is empty (0 bytes); pass the bytes of a video file")
    fd, name = tempfile.mkstemp(prefix="owl3-video-")
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(source)
        yield Path(name)
    finally:
        os.unlink(name)
