"""Colour management: a picture's colour description -> the transform to sRGB (LittleCMS, Pillow's
ImageCms), as a colour-managed viewer shows the picture.

Two descriptions reach owl3: an embedded ICC profile (JPEG, PNG, WebP, TIFF, HEIC), and, in HEIC/HEIF
files without one, an `nclx` box (ITU-T H.273 code points: colour primaries, transfer characteristics).
`nclx_profile` writes the second as a small ICC matrix/TRC profile, so both go through one transform.
"""

from __future__ import annotations

import functools
import io
import struct
from typing import Any

import numpy as np
from PIL import ImageCms

# image modes whose embedded ICC profile is applied (16-bit and float images keep their values' scaling)
ICC_MODES = ("RGB", "RGBA", "CMYK", "L")

D50 = np.array([0.9642, 1.0, 0.8249])  # the ICC profile connection space's white
BRADFORD = np.array([[0.8951, 0.2664, -0.1614], [-0.7502, 1.7135, 0.0367], [0.0389, -0.0685, 1.0296]])
# the H.273 transfer characteristics owl3 converts from, as ICC parametric curves (type 3: g, a, b, c, d for
# Y = (aX + b)^g where X >= d, else Y = cX)
_TRANSFERS = {
    13: (2.4, 1 / 1.055, 0.055 / 1.055, 1 / 12.92, 0.04045),  # sRGB (IEC 61966-2-1), Display P3's too
    8: (1.0, 1.0, 0.0, 0.0, 0.0),  # linear
    4: (2.2, 1.0, 0.0, 0.0, 0.0),  # gamma 2.2
    5: (2.8, 1.0, 0.0, 0.0, 0.0),  # gamma 2.8
}
_SRGB_PRIMARIES = (1, 2)  # BT.709 (= sRGB) and "unspecified": the pixels stay as they are


@functools.lru_cache(maxsize=16)
def srgb_transform(icc: bytes, mode: str) -> Any:
    """A cached LittleCMS transform from the profile `icc` (images of `mode`) to sRGB; None when the
    profile is sRGB already (the pixels stay as they are) or cannot be read or applied to `mode`."""
    try:
        src = ImageCms.ImageCmsProfile(io.BytesIO(icc))
        if "srgb" in (ImageCms.getProfileDescription(src) or "").lower():
            return None
        out = "RGBA" if mode == "RGBA" else "RGB"
        return ImageCms.buildTransform(src, ImageCms.createProfile("sRGB"), mode, out)
    except (ImageCms.PyCMSError, OSError, ValueError, TypeError):
        return None


def nclx_profile(nclx: dict[str, Any]) -> bytes | None:
    """An ICC profile (v2 RGB display, matrix/TRC) for pillow-heif's `nclx_profile` info: its primaries and
    white point (chromaticities), Bradford-adapted to D50, and its transfer curve. None when the colours
    are sRGB's already, the transfer is not one of `_TRANSFERS` (HDR's PQ and HLG stay as pillow-heif's
    8-bit conversion gives them) or the chromaticities make no colour space."""
    try:
        if nclx["color_primaries"] in _SRGB_PRIMARIES or nclx["transfer_characteristics"] not in _TRANSFERS:
            return None
        xy = [(nclx[f"color_primary_{c}_x"], nclx[f"color_primary_{c}_y"]) for c in ("red", "green", "blue")]
        white = _xyz(nclx["color_primary_white_x"], nclx["color_primary_white_y"])
        rgb = np.stack([_xyz(x, y) for x, y in xy], axis=1)  # columns: the primaries' XYZ, Y = 1
        to_xyz = rgb * np.linalg.solve(rgb, white)  # scaled so that R = G = B = 1 is the white
        cone = BRADFORD @ white
        adapt = np.linalg.solve(BRADFORD, np.diag((BRADFORD @ D50) / cone) @ BRADFORD)
    except (KeyError, TypeError, ZeroDivisionError, np.linalg.LinAlgError):
        return None
    colorants = (adapt @ to_xyz).T  # rows: red, green, blue in the D50 connection space
    if not (np.isfinite(colorants).all() and np.abs(colorants).max() < 8):  # e.g. two primaries at one point
        return None
    return icc_profile(colorants, _TRANSFERS[nclx["transfer_characteristics"]], "owl3 nclx RGB")


def _xyz(x: float, y: float) -> np.ndarray:
    return np.array([x / y, 1.0, (1.0 - x - y) / y])


def _s15(v: float) -> bytes:
    return struct.pack(">i", round(v * 65536))


def icc_profile(colorants: Any, curve: tuple[float, ...], name: str) -> bytes:
    """A minimal ICC v2 RGB display profile: desc, wtpt (D50), the r/g/b colorants (D50 XYZ, rows) and one
    parametric TRC (type 3: g, a, b, c, d) for the three channels."""

    def xyz(v: Any) -> bytes:
        return b"XYZ " + b"\0" * 4 + b"".join(_s15(c) for c in v)

    para = b"para" + b"\0" * 4 + struct.pack(">HH", 3, 0) + b"".join(_s15(p) for p in curve)
    text = name.encode() + b"\0"
    desc = b"desc" + b"\0" * 4 + struct.pack(">I", len(text)) + text + b"\0" * 78
    tags = [(b"desc", desc), (b"wtpt", xyz(D50)), (b"rXYZ", xyz(colorants[0])), (b"gXYZ", xyz(colorants[1])),
            (b"bXYZ", xyz(colorants[2])), (b"rTRC", para), (b"gTRC", para), (b"bTRC", para)]  # fmt: skip
    offset, table, data = 128 + 4 + 12 * len(tags), b"", b""
    for sig, body in tags:
        table += sig + struct.pack(">II", offset + len(data), len(body))
        data += body + b"\0" * (-len(body) % 4)
    header = struct.pack(">I", offset + len(data)) + b"\0" * 4 + bytes([2, 0x10, 0, 0]) + b"mntrRGB XYZ "
    header += b"\0" * 12 + b"acsp" + b"\0" * 28 + b"".join(_s15(c) for c in D50)
    return header + b"\0" * (128 - len(header)) + struct.pack(">I", len(tags)) + table + data
