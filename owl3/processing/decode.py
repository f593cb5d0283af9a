"""What users pass as an image, turned into the 8-bit RGB PIL image the image transform expects.

Accepted: a PIL image, a path (str or `os.PathLike`, `file://` URLs included), `bytes` of an encoded image
file, a `data:...;base64,` URL, and numpy arrays or torch tensors H×W×C (C = 1, 3 or 4) or H×W, uint8 or
float in [0, 1] (uint16 and bool too). http(s) URLs are refused: fetching is the server's job, behind its
flags. The pixels are what an image viewer shows:
- EXIF orientation is applied (a phone photo taken upright is upright);
- an embedded colour profile other than sRGB (Display P3 from a phone, Adobe RGB from a camera, a CMYK
  press profile) is converted to sRGB, as a colour-managed viewer shows it; a profile that cannot be read
  is ignored, as viewers ignore it; a HEIC's nclx colour description likewise (colour.py);
- 16-bit and 32-bit integer images are scaled to 8 bits, float images from [0, 1] (a range outside
  [0, 1] is stretched min-to-max), instead of Pillow's `convert("RGB")`, which clips them;
- transparency (RGBA, LA, palette or colour-key transparency) is composited on white.
`official=True` restores the official code's `convert("RGB")` and nothing else (for parity checks).

Decoding is refused, before any pixel is read, when width × height exceeds `max_pixels` (`MediaTooLarge`);
Pillow's own decompression-bomb limit and warnings are replaced by that limit (Pillow's process-wide
`MAX_IMAGE_PIXELS` is left alone). This is not a transform: no resizing, no normalizing (`image.py`).
"""

from __future__ import annotations

import base64
import binascii
import io
import os
import struct
from pathlib import Path
from typing import IO, Any
from urllib.parse import unquote, urlsplit

import numpy as np
from PIL import Image, ImageCms, ImageOps

from owl3.errors import MediaTooLarge, Owl3Error
from owl3.processing.colour import ICC_MODES, nclx_profile, srgb_transform

# 128 megapixels: a 12000×9000 scan or a 200 MP phone's binned photo pass; 15000×15000 needs max_pixels raised
DEFAULT_MAX_PIXELS = 128_000_000
ORIENTATION = 0x0112  # the EXIF tag
_URL_SCHEMES = ("http://", "https://", "ftp://", "ftps://", "s3://", "gs://")


def is_remote_url(s: str) -> bool:
    return s[:8].lower().startswith(_URL_SCHEMES)


def url_refused(what: str, url: str) -> Owl3Error:
    shown = url if len(url) <= 80 else url[:77] + "..."
    return Owl3Error(
        f"{what} is a URL ({shown!r}); the Python API and the command line do not fetch URLs: download the "
        "file and pass its path (or its bytes, or a PIL image); `owl3 serve --allow-remote-media` fetches"
    )


def data_url_bytes(url: str, what: str) -> bytes:
    """The payload of a `data:<type>;base64,<payload>` URL."""
    head, sep, payload = url.partition(",")
    if not sep or not head.lower().endswith(";base64"):
        raise Owl3Error(f"{what} is a data: URL that is not base64; write it as data:<type>;base64,<payload>")
    try:
        return base64.b64decode(payload, validate=True)
    except (binascii.Error, ValueError):
        raise Owl3Error(f"{what} is a data: URL whose payload is not valid base64") from None


def local_path(item: str | os.PathLike, what: str) -> Path:
    """A path from a str (a `file://` URL too), refusing remote URLs with a message that says what to do."""
    s = os.fspath(item)
    if isinstance(s, bytes):
        s = os.fsdecode(s)
    if is_remote_url(s):
        raise url_refused(what, s)
    if s[:7].lower() == "file://":
        parts = urlsplit(s)
        if parts.netloc not in ("", "localhost"):
            raise Owl3Error(f"{what}: a file:// URL names no host; pass the local path ({s!r})")
        return Path(unquote(parts.path))
    return Path(s)


# ------------------------------------------------------------------------------------------------ opening
def _open_unchecked(fp: IO[bytes]) -> Image.Image:
    """`Image.open` without Pillow's decompression-bomb check (the caller applies its own limit): the same
    walk over Pillow's registered format factories, in order. Reads the header only."""
    Image.init()
    fp.seek(0)
    prefix = fp.read(16)
    for fmt in Image.ID:
        factory, accept = Image.OPEN[fmt]
        ok = not accept or accept(prefix)
        if not ok or isinstance(ok, str):
            continue
        try:
            fp.seek(0)
            return factory(fp, "")
        except (SyntaxError, IndexError, TypeError, struct.error):
            continue
    raise OSError("cannot identify image file")


# the major brands of HEIF files holding HEVC pictures (iPhone photos: "heic"); AVIF files ("avif") are
# Pillow's own
HEIF_BRANDS = (b"heic", b"heix", b"heim", b"heis", b"hevc", b"hevx", b"mif1", b"msf1")


def _is_heif(head: bytes) -> bool:
    return head[4:8] == b"ftyp" and head[8:12] in HEIF_BRANDS


def is_image_file(path: str | os.PathLike) -> bool:
    """Whether Pillow recognizes the file's header, or it is a HEIF picture (nothing is decoded)."""
    try:
        with open(path, "rb") as f:
            head = f.read(1 << 20)
        if _is_heif(head):
            return True
        _open_unchecked(io.BytesIO(head))
        return True
    except (OSError, SyntaxError, ValueError, EOFError):
        return False


def _open_heif(data: bytes, name: str, check_size: Any) -> Image.Image:
    """A HEIC/HEIF picture through pillow-heif (optional: `pip install pillow-heif`), its size checked
    before decoding; its EXIF and ICC profile come along as Pillow's would, and an nclx colour description
    (without an ICC profile) comes as the ICC profile it amounts to."""
    try:
        import pillow_heif
    except ImportError:
        raise Owl3Error(
            f"{name} is a HEIC/HEIF picture, which needs pillow-heif: pip install pillow-heif (or "
            "'owl3[heif]'), or convert it to JPEG or PNG"
        ) from None
    try:
        heif = pillow_heif.open_heif(io.BytesIO(data), convert_hdr_to_8bit=True)
        check_size(*heif.size)
        img = heif.to_pillow()
        img.load()
        nclx = heif.info.get("nclx_profile")
        if nclx and not img.info.get("icc_profile"):  # colours described by code points, not a profile
            profile = nclx_profile(nclx)
            if profile is not None:
                img.info["icc_profile"] = profile
        return img
    except (OSError, ValueError, RuntimeError, SyntaxError, EOFError) as e:
        raise Owl3Error(f"cannot read {name} ({type(e).__name__}: {e}); pass a valid HEIC file") from None


def open_image(source: Path | bytes, *, max_pixels: int | None = DEFAULT_MAX_PIXELS, what: str = "image",
               limit_hint: str = "max_pixels=... (--max-pixels N)") -> Image.Image:
    """Open and decode an image file or encoded bytes, refusing more than `max_pixels` before decoding.

    Raises `MediaTooLarge` (an `Owl3Error`) over the limit and `Owl3Error` for what is no image."""
    at = "" if what == "image" else f" ({what})"
    if isinstance(source, Path):
        if source.is_dir():
            raise Owl3Error(f"image path is a directory, not a file: {str(source)!r}{at}")
        try:
            data = source.read_bytes()
        except FileNotFoundError:
            raise Owl3Error(f"image file not found: {str(source)!r}{at}; check the path") from None
        except OSError as e:
            raise Owl3Error(f"cannot read image file {str(source)!r}{at} ({e.strerror or e})") from None
        name = f"image file {str(source)!r}{at}"
    else:
        data, name = bytes(source), f"image{at} ({len(source)} bytes)"
    if not data:
        raise Owl3Error(f"{name} is empty; pass a PNG, JPEG, WebP, ... file")
    fp = io.BytesIO(data)

    def check_size(w: int, h: int) -> None:
        if max_pixels is not None and w * h > max_pixels:
            raise MediaTooLarge(
                f"{name} is {w}x{h} = {w * h} pixels, over the limit of {max_pixels}; raise it "
                f"with {limit_hint} if you mean it (decoding takes about {w * h * 4 >> 20} MiB)",
                width=w,
                height=h,
                limit=max_pixels,
            )

    if _is_heif(data):
        return _open_heif(data, name, check_size)
    try:
        # the header only, without Pillow's decompression-bomb check: our own limit decides. Pillow's check
        # is a process-wide setting (and its warning a process-wide filter), so neither is touched
        img = _open_unchecked(fp)
        w, h = img.size
        check_size(w, h)
        if Image.MAX_IMAGE_PIXELS is None or w * h <= Image.MAX_IMAGE_PIXELS:
            img = Image.open(fp)  # under Pillow's own limit: Pillow's own way, which warns of nothing
        img.load()  # decode now so that a truncated file fails here, not later
        return img
    except (OSError, SyntaxError, ValueError, EOFError, Image.DecompressionBombError) as e:
        raise Owl3Error(
            f"cannot read {name} ({type(e).__name__}: {e}); pass a valid PNG, JPEG, WebP, ... file, "
            "a PIL image or an array"
        ) from None


# ------------------------------------------------------------------------------------------------ pixels
def _scale_to_u8(a: np.ndarray, kind: str) -> np.ndarray:
    """A 16-bit, 32-bit integer or float array -> uint8 by its range, not clipped at 255.

    kind "16": 0..65535 -> 0..255. "int" (32-bit, whose range Pillow does not say): 8-bit values stay,
    16-bit ones are scaled as 16 bits, wider ones stretched from min to max. "float": [0, 1] -> 0..255,
    another range stretched from min to max (NaN and infinities as 0)."""
    if kind == "float":
        a = np.nan_to_num(a.astype(np.float32), nan=0.0, posinf=0.0, neginf=0.0)
        lo, hi = (float(a.min()), float(a.max())) if a.size else (0.0, 1.0)
        if lo < 0.0 or hi > 1.0:  # not a [0, 1] image: stretch what is there
            a = (a - lo) / (hi - lo) if hi > lo else np.zeros_like(a)
        return np.rint(a * 255.0).astype(np.uint8)
    lo, hi = (int(a.min()), int(a.max())) if a.size else (0, 0)
    if kind == "int" and lo >= 0 and hi <= 255:
        return a.astype(np.uint8)
    if kind == "16" or (lo >= 0 and hi <= 65535):
        return ((a.astype(np.uint32) * 255 + 32767) // 65535).astype(np.uint8)  # rounded
    return ((a.astype(np.int64) - lo) * 255 // max(1, hi - lo)).astype(np.uint8)


def _has_alpha(img: Image.Image) -> bool:
    return img.mode in ("RGBA", "LA", "PA", "La", "RGBa") or "transparency" in img.info


def _on_white(img: Image.Image) -> Image.Image:
    if img.mode == "La":
        img = img.convert("LA")  # Pillow has no La -> RGBA conversion
    rgba = img.convert("RGBA")
    white = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
    return Image.alpha_composite(white, rgba).convert("RGB")


def to_rgb(img: Image.Image, *, official: bool = False) -> Image.Image:
    """8-bit RGB as a viewer shows `img` (see the module docstring); `official=True`: `convert("RGB")`."""
    if official:
        return img if img.mode == "RGB" else img.convert("RGB")
    try:
        orientation = img.getexif().get(ORIENTATION, 1)
    except Exception:  # a broken EXIF block: Pillow raises many types here; the pixels are still fine
        orientation = 1
    if orientation in (2, 3, 4, 5, 6, 7, 8):
        img = ImageOps.exif_transpose(img)
    icc = img.info.get("icc_profile")
    if icc and img.mode in ICC_MODES:
        transform = srgb_transform(bytes(icc), img.mode)
        if transform is not None:
            img = ImageCms.applyTransform(img, transform)
    if img.mode == "RGB":
        return img
    if img.mode in ("I", "F") or img.mode.startswith("I;16"):
        kind = "float" if img.mode == "F" else "16" if img.mode.startswith("I;16") else "int"
        u8 = _scale_to_u8(np.asarray(img), kind)
        return Image.fromarray(u8, "L").convert("RGB")
    if _has_alpha(img):
        return _on_white(img)
    try:
        return img.convert("RGB")
    except ValueError as e:
        raise Owl3Error(f"cannot convert an image of mode {img.mode} to RGB ({e}); save it as RGB") from None


def array_to_image(a: Any, what: str = "image") -> Image.Image:
    """A numpy array or torch tensor H×W×C (C = 1, 3, 4) or H×W -> an RGB PIL image (see the docstring)."""
    if type(a).__module__.startswith("torch"):
        t = a.detach().cpu()
        if t.dtype.is_floating_point and t.dtype not in (_torch().float32, _torch().float64):
            t = t.float()  # numpy has no bfloat16
        a = t.numpy()
    a = np.asarray(a)
    if a.ndim == 3 and a.shape[-1] not in (1, 3, 4):
        hint = " (it looks channel-first: use x.permute(1, 2, 0) or x.transpose(1, 2, 0))" if (
            a.shape[0] in (1, 3, 4)) else ""
        raise Owl3Error(f"{what} is an array of shape {a.shape}; pass H×W×C with C = 1, 3 or 4{hint}")
    if a.ndim not in (2, 3) or 0 in a.shape:
        raise Owl3Error(f"{what} is an array of shape {a.shape}; pass H×W×C (C = 1, 3 or 4) or H×W")
    if a.dtype == np.bool_:
        u8 = a.astype(np.uint8) * 255
    elif a.dtype == np.uint8:
        u8 = a
    elif a.dtype == np.uint16:
        u8 = _scale_to_u8(a, "16")
    elif np.issubdtype(a.dtype, np.floating):
        if not np.isfinite(a).all():
            raise Owl3Error(f"{what} is a float array holding NaN or infinity; pass floats in [0, 1]")
        if a.min() < 0.0 or a.max() > 1.0:
            raise Owl3Error(
                f"{what} is a float array with values outside [0, 1] (min {a.min():.4g}, max {a.max():.4g}); "
                "pass floats in [0, 1] or uint8 in [0, 255]"
            )
        u8 = np.rint(a.astype(np.float64) * 255.0).astype(np.uint8)
    else:
        raise Owl3Error(f"{what} is an array of {a.dtype}; pass uint8 (0..255) or float (0..1)")
    if u8.ndim == 3 and u8.shape[-1] == 1:
        u8 = u8[..., 0]
    u8 = np.ascontiguousarray(u8)
    if u8.ndim == 2:
        return Image.fromarray(u8, "L").convert("RGB")
    if u8.shape[-1] == 4:
        return _on_white(Image.fromarray(u8, "RGBA"))
    return Image.fromarray(u8, "RGB")


def _torch():
    import torch

    return torch


def is_array(item: Any) -> bool:
    if isinstance(item, np.ndarray):
        return True
    return type(item).__module__.startswith("torch") and hasattr(item, "numpy")


def load_image(item: Any, *, max_pixels: int | None = DEFAULT_MAX_PIXELS, official: bool = False,
               what: str = "image") -> Image.Image:
    """Any accepted image input (see the module docstring) -> an 8-bit RGB PIL image."""
    if isinstance(item, Image.Image):
        return to_rgb(item, official=official)
    if isinstance(item, (bytes, bytearray, memoryview)):
        return to_rgb(open_image(bytes(item), max_pixels=max_pixels, what=what), official=official)
    if isinstance(item, str) and item[:5].lower() == "data:":
        data = data_url_bytes(item, what)
        return to_rgb(open_image(data, max_pixels=max_pixels, what=what), official=official)
    if isinstance(item, (str, os.PathLike)):
        path = local_path(item, what)
        return to_rgb(open_image(path, max_pixels=max_pixels, what=what), official=official)
    if is_array(item):
        return array_to_image(item, what)
    raise Owl3Error(
        f"{what} is a {type(item).__name__}; pass a PIL image, a path, the bytes of an image file, or an "
        "array H×W×C (uint8, or float in [0, 1])"
    )
