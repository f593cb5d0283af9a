"""A request's images and videos: where they may come from, and decoding them safely.

A media URL is one of
- `data:<type>;base64,<payload>` (always allowed);
- `file:///path`, only under `--allowed-local-media-path` (the path is resolved first, so neither `..` nor
  a symlink can lead out of that folder);
- `http(s)://...`, only with `--allow-remote-media`, through `fetch.py` (timeouts, a byte cap, no private
  addresses unless `--allow-private-media-hosts`).
Images are refused before decoding when width * height exceeds the pixel cap (read from the header; PIL's
process-wide MAX_IMAGE_PIXELS is left alone); videos when their frame size does. Every failure is a 400
naming the part (`messages[i].content[j]`), never its payload.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import threading
from collections import OrderedDict
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import unquote, urlsplit

from PIL import Image

from owl3.errors import MediaTooLarge, Owl3Error
from owl3.processing.decode import open_image, to_rgb
from owl3.processing.video import read_video, video_file, video_info
from owl3.serving.fetch import fetch, is_public
from owl3.serving.protocol import APIError, bad_request

MiB = 1 << 20


@dataclass(frozen=True)
class MediaPolicy:
    """Where media may come from and how large they may be (one per server)."""

    local_root: Path | None = None  # file:// URLs allowed under this folder (resolved); None = never
    allow_remote: bool = False  # http(s):// URLs
    allow_private_hosts: bool = False  # http(s) to loopback / private / link-local addresses
    max_bytes: int = 256 * MiB  # one image or video, however it comes
    max_image_pixels: int = 64_000_000  # width * height of an image or of a video frame
    image_timeout_s: float = 5.0
    video_timeout_s: float = 30.0
    official_pixels: bool = False  # True: convert("RGB") as the official code (no orientation, clipping)

    def __post_init__(self) -> None:
        if self.local_root is not None:
            object.__setattr__(self, "local_root", Path(self.local_root).resolve(strict=True))


def read_url(url: str, kind: str, where: str, policy: MediaPolicy) -> bytes | Path:
    """The bytes behind a media URL, or the checked local path of a file:// URL."""
    scheme = url.split(":", 1)[0].lower() if ":" in url else ""
    if scheme == "data":
        return _data_url(url, kind, where, policy)
    if scheme == "file":
        return _local_file(url, kind, where, policy)
    if scheme in ("http", "https"):
        if not policy.allow_remote:
            raise bad_request(
                f"{where}: remote {kind} URLs are off on this server; send the {kind} as a data: URL "
                "(or start the server with --allow-remote-media)",
                code="media_url_not_allowed",
                param=where,
            )
        try:
            return fetch(
                url,
                timeout=policy.image_timeout_s if kind == "image" else policy.video_timeout_s,
                max_bytes=policy.max_bytes,
                allow_address=(lambda ip: True) if policy.allow_private_hosts else is_public,
                what=kind,
            )
        except APIError as e:  # say which part of the request it was
            e.param, e.message = where, f"{where}: {e.message}"
            raise
    raise bad_request(
        f"{where}: a {kind} URL must be data:, file:// or http(s)://", code="invalid_media_url", param=where
    )


def _data_url(url: str, kind: str, where: str, policy: MediaPolicy) -> bytes:
    head, sep, payload = url.partition(",")
    if not sep or not head.lower().endswith(";base64"):
        raise bad_request(
            f"{where}: a data: URL must be base64 (data:<type>;base64,...)",
            code="invalid_base64",
            param=where,
        )
    if len(payload) * 3 // 4 > policy.max_bytes:
        raise bad_request(
            f"{where}: the {kind} is larger than {policy.max_bytes} bytes",
            code="media_too_large",
            param=where,
        )
    try:
        return base64.b64decode(payload, validate=True)
    except (binascii.Error, ValueError):
        raise bad_request(
            f"{where}: the {kind} data is not valid base64", code="invalid_base64", param=where
        ) from None


def _local_file(url: str, kind: str, where: str, policy: MediaPolicy) -> Path:
    if policy.local_root is None:
        raise bad_request(
            f"{where}: file:// URLs are off on this server (start it with --allowed-local-media-path DIR)",
            code="media_url_not_allowed",
            param=where,
        )
    parts = urlsplit(url)
    if parts.netloc not in ("", "localhost"):
        raise bad_request(f"{where}: a file:// URL names no host", code="invalid_media_url", param=where)
    try:
        path = Path(unquote(parts.path)).resolve(strict=True)  # follows every symlink and '..'
    except (OSError, RuntimeError, ValueError):
        path = None
    if path is None or not path.is_relative_to(policy.local_root) or not path.is_file():
        # one answer for "missing" and "outside": the client learns nothing about the server's files
        raise bad_request(
            f"{where}: no such file under the server's allowed media folder",
            code="media_url_not_allowed",
            param=where,
        )
    if path.stat().st_size > policy.max_bytes:
        raise bad_request(
            f"{where}: the {kind} is larger than {policy.max_bytes} bytes",
            code="media_too_large",
            param=where,
        )
    return path


def decode_image(source: bytes | Path, where: str, policy: MediaPolicy) -> Image.Image:
    """An RGB image as a viewer shows it (owl3/processing/decode.py: EXIF orientation, 16-bit and float
    scaled, transparency on white), refusing what is not an image and what has more pixels than the cap
    before decoding."""
    try:
        img = open_image(source, max_pixels=policy.max_image_pixels, what="the image")
        return to_rgb(img, official=policy.official_pixels)
    except MediaTooLarge as e:
        raise bad_request(
            f"{where}: the image is {e.width}x{e.height}, over the server's {e.limit} pixel limit",
            code="image_too_large",
            param=where,
        ) from None
    except Owl3Error:
        raise bad_request(
            f"{where}: the image cannot be decoded; send a PNG, JPEG, WebP, GIF or BMP",
            code="invalid_image",
            param=where,
        ) from None


class ClipCache:
    """The frames of the last few videos decoded, keyed by their bytes (or file and its mtime and size)
    and the sampling asked: OpenAI clients resend a conversation's video with every turn, and sampling it
    again would cost the follow-up more than its answer (the engine's media cache then skips the tower)."""

    def __init__(self, max_clips: int = 8) -> None:
        self.max_clips = max_clips
        self._clips: OrderedDict[tuple, list[Image.Image]] = OrderedDict()
        self._lock = threading.Lock()

    @staticmethod
    def key(source: bytes | Path, frames: int | None, fps: float | None, max_frames: int) -> tuple:
        if isinstance(source, Path):
            st = source.stat()
            what: tuple = ("file", str(source.resolve()), st.st_mtime_ns, st.st_size)
        else:
            what = ("bytes", hashlib.sha256(source).digest())
        return (*what, frames, fps, max_frames)

    def get(self, key: tuple) -> list[Image.Image] | None:
        with self._lock:
            clip = self._clips.get(key)
            if clip is not None:
                self._clips.move_to_end(key)
            return clip

    def put(self, key: tuple, clip: list[Image.Image]) -> None:
        with self._lock:
            self._clips[key] = clip
            while len(self._clips) > self.max_clips:
                self._clips.popitem(last=False)


def decode_video(
    source: bytes | Path,
    where: str,
    policy: MediaPolicy,
    *,
    frames: int | None,
    fps: float | None,
    max_frames: int,
    cache: ClipCache | None = None,
) -> list[Image.Image]:
    """Sample a video's frames (`frames` evenly, or `fps` per second, at most `max_frames`); a clip in
    `cache` is not decoded again."""
    key = cache.key(source, frames, fps, max_frames) if cache is not None else None
    clip = cache.get(key) if cache is not None else None
    if clip is None:
        clip = _decode_video(source, where, policy, frames=frames, fps=fps, max_frames=max_frames)
        if cache is not None:
            cache.put(key, clip)
    return list(clip)


def _decode_video(
    source: bytes | Path,
    where: str,
    policy: MediaPolicy,
    *,
    frames: int | None,
    fps: float | None,
    max_frames: int,
) -> list[Image.Image]:
    with video_file(source) as path:
        try:
            info = video_info(path)
            if info.width * info.height > policy.max_image_pixels:
                raise bad_request(
                    f"{where}: the video frames are {info.width}x{info.height}, over the server's "
                    f"{policy.max_image_pixels} pixel limit",
                    code="image_too_large",
                    param=where,
                )
            official = policy.official_pixels
            if fps is not None:
                return read_video(path, fps=fps, max_frames=max_frames, official=official)
            return read_video(path, frames=min(frames or max_frames, max_frames), official=official)
        except Owl3Error:  # its message names the temporary file: say which part instead
            raise bad_request(
                f"{where}: the video cannot be decoded; send an MP4, WebM, MKV, ...",
                code="invalid_video",
                param=where,
            ) from None
