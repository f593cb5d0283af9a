"""What a caller passes as images and videos, made into lists of images and of sampled frames.

`media_list` takes images= / videos= in any of the forms the API accepts, `load_video` turns one video (a
file, its bytes, a `data:` URL, a list of frames, an array T×H×W×C) into its sampled frames, and
`media_kind` tells a file's kind. Decoding a single picture is processing/decode.py's.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

from PIL import Image

from owl3.errors import Owl3Error
from owl3.processing.decode import (
    DEFAULT_MAX_PIXELS,
    data_url_bytes,
    is_array,
    is_image_file,
    load_image,
    local_path,
)
from owl3.processing.video import check_sampling, frame_indices, read_video, video_file

VideoInput = str | Path | bytes | Sequence[Any] | Any  # a file, its bytes, a list of frames, an array T×H×W×C


def media_list(items: Any, name: str) -> list[Any]:
    """images= / videos= as a list: None is none, a lone item (a path, bytes, a PIL image, one image
    array) is wrapped, a batch array (N×H×W×C images) is split; anything else must be a list."""
    if items is None:
        return []
    if isinstance(items, (str, Path, bytes, bytearray, Image.Image)):
        return [items]
    if is_array(items):
        if name == "images" and items.ndim in (2, 3):
            return [items]
        if name == "videos" and items.ndim == 4:
            return [items]
        return list(items)
    if not isinstance(items, Sequence):
        example = "photo.jpg" if name == "images" else "clip.mp4"
        raise Owl3Error(
            f"{name} must be a list, got {type(items).__name__} ({items!r:.40}); e.g. {name}=[{example!r}]"
        )
    return list(items)


def load_video(
    video: VideoInput,
    *,
    frames: int | None = None,
    fps: float | None = None,
    max_frames: int | None = None,
    progress: bool = False,
    max_pixels: int | None = DEFAULT_MAX_PIXELS,
    what: str = "the video",
    official: bool = False,
    max_count: int | None = None,
) -> list[Image.Image]:
    """A video's sampled frames: a file (path, `file://` or `data:` URL, or its bytes) is sampled with
    PyAV; a list of frames or an array T×H×W×C is sampled by `frames` / `max_frames` (a list has no
    frame rate, so `fps` is refused for it). `official`: the official code's RGB conversion
    (docs/faithfulness.md); `max_count`: decode no more frames than this (each is a prompt token)."""
    frames, fps, max_frames = check_sampling(frames, fps, max_frames)
    if isinstance(video, str) and video[:5].lower() == "data:":
        video = data_url_bytes(video, what)
    sampling = dict(frames=frames, fps=fps, max_frames=max_frames, max_count=max_count)
    decoding = dict(progress=progress, max_pixels=max_pixels, official=official)
    if isinstance(video, (bytes, bytearray, memoryview)):
        with video_file(video) as path:
            try:
                return read_video(path, **sampling, **decoding)
            except Owl3Error as e:  # name the caller's bytes, not the temporary file
                e.args = (str(e).replace(str(path), f"{what} ({len(video)} bytes)"),)
                raise e from None
    if isinstance(video, (str, Path)):
        return read_video(local_path(video, what), **sampling, **decoding)
    if isinstance(video, Image.Image):
        raise Owl3Error("a video given as frames must be a list of images: pass videos=[frames]")
    if is_array(video):
        if video.ndim != 4:
            raise Owl3Error(
                f"{what} is an array of shape {tuple(video.shape)}; a video array is T×H×W×C "
                "(for one image, use images=)"
            )
    elif not isinstance(video, Sequence):
        raise Owl3Error(
            f"{what} is a {type(video).__name__}; pass a video file's path or bytes, a list of frames "
            "or an array T×H×W×C"
        )
    frames_list = list(video)
    if not frames_list:
        raise Owl3Error(f"{what} is given as frames but has no frames")
    if fps is not None:
        raise Owl3Error(
            f"{what} is a list of frames, which has no frame rate, so fps does not apply; "
            "pass frames=N to sample N of them, or pass the video file"
        )
    if frames is not None or max_frames is not None:
        frames_list = [
            frames_list[i] for i in frame_indices(len(frames_list), frames=frames, max_frames=max_frames)
        ]
    return [load_image(f, official=official, what=f"{what}[{k}]") for k, f in enumerate(frames_list)]


# files named like this are videos, like this images; anything else is looked at (Pillow reads it or not)
VIDEO_SUFFIXES = {
    ".mp4",
    ".mkv",
    ".webm",
    ".avi",
    ".mov",
    ".m4v",
    ".mpg",
    ".mpeg",
    ".ts",
    ".m2ts",
    ".mts",
    ".flv",
    ".wmv",
    ".3gp",
    ".ogv",
    ".vob",
    ".mxf",
    ".ivf",
    ".y4m",
    ".h264",
    ".264",
    ".h265",
    ".265",
    ".hevc",
    ".m2v",
    ".mjpeg",
    ".mjpg",
}
IMAGE_SUFFIXES = {
    ".png",
    ".jpg",
    ".jpeg",
    ".webp",
    ".gif",
    ".bmp",
    ".tif",
    ".tiff",
    ".avif",
    ".jp2",
    ".j2k",
    ".ppm",
    ".pgm",
    ".pbm",
    ".tga",
    ".ico",
    ".heic",
    ".heif",
}


def media_kind(path: str | Path) -> str:
    """ "video" or "image" for a file: by its suffix, else by its content (a header Pillow reads is an
    image; a raw .h264 stream or an unknown suffix that Pillow does not read is taken as a video)."""
    suffix = Path(path).suffix.lower()
    if suffix in VIDEO_SUFFIXES or suffix in IMAGE_SUFFIXES:
        return "video" if suffix in VIDEO_SUFFIXES else "image"
    return "image" if not Path(path).is_file() or is_image_file(path) else "video"
