"""Picture formats and colour beyond plain RGB files: embedded ICC profiles (converted to sRGB), HEIC/HEIF
photos (through pillow-heif), and animated WebP as a video (through Pillow, which FFmpeg cannot decode)."""

from __future__ import annotations

import sys

import pytest
from PIL import Image, ImageCms

from owl3 import Owl3Error
from owl3.errors import MediaTooLarge
from owl3.processing.colour import icc_profile as make_icc_profile
from owl3.processing.colour import nclx_profile
from owl3.processing.decode import load_image
from tests.test_inputs import _close, _px

LINEAR = (1.0, 1.0, 0.0, 0.0, 0.0)  # a parametric ICC curve: Y = X


def icc_profile(colorants, curve=LINEAR, name: str = "linear test RGB") -> bytes:
    return make_icc_profile(colorants, curve, name)


SRGB_D50 = ((0.4361, 0.2225, 0.0139), (0.3851, 0.7169, 0.0971), (0.1431, 0.0606, 0.7141))


def _srgb_encode(v: int) -> int:
    x = v / 255
    return round(255 * (1.055 * x ** (1 / 2.4) - 0.055 if x > 0.0031308 else 12.92 * x))


@pytest.mark.parametrize("fmt", ["PNG", "JPEG", "WEBP"])
def test_an_embedded_colour_profile_is_converted_to_srgb(tmp_path, fmt):
    """A photo tagged with a non-sRGB profile (here: linear-light sRGB primaries, so the right sRGB values
    are the sRGB curve of the stored ones) looks as a colour-managed viewer shows it; the official pixels
    and an image without a profile keep the stored values."""
    stored = (128, 64, 200)
    path = tmp_path / f"tagged.{fmt.lower()}"
    options = {"JPEG": {"quality": 100, "subsampling": 0}, "WEBP": {"lossless": True}}.get(fmt, {})
    Image.new("RGB", (16, 16), stored).save(path, fmt, icc_profile=icc_profile(SRGB_D50), **options)
    assert Image.open(path).info.get("icc_profile")  # the format really carries it
    want = tuple(_srgb_encode(v) for v in stored)  # (188, 137, 229)
    got, official = _px(load_image(path), 8, 8), _px(load_image(path, official=True), 8, 8)
    assert all(abs(g - w) <= 2 for g, w in zip(got, want, strict=True)), (got, want)
    assert all(abs(g - v) <= 2 for g, v in zip(official, stored, strict=True)), official
    # an sRGB profile, a profile that cannot be read, and no profile: the stored values
    for icc in (ImageCms.ImageCmsProfile(ImageCms.createProfile("sRGB")).tobytes(), b"not a profile", None):
        img = Image.new("RGB", (4, 4), stored)
        if icc is not None:
            img.info["icc_profile"] = icc
        assert _px(load_image(img), 0, 0) == stored


def test_a_profile_with_transparency_and_orientation(tmp_path):
    img = Image.new("RGBA", (8, 4), (128, 64, 200, 255))
    img.putpixel((0, 0), (0, 0, 0, 0))  # a transparent pixel: white after compositing
    exif = Image.Exif()
    exif[0x0112] = 6  # shown rotated 90 degrees clockwise
    path = tmp_path / "tagged.png"
    img.save(path, icc_profile=icc_profile(SRGB_D50), exif=exif)
    out = load_image(path)
    assert out.mode == "RGB" and out.size == (4, 8)
    assert _px(out, 3, 0) == (255, 255, 255)  # the top-left pixel, rotated to the top right
    assert all(abs(g - w) <= 2 for g, w in zip(_px(out, 1, 4), (188, 137, 229), strict=True))



def _heic(img: Image.Image) -> bytes:
    import io

    pillow_heif = pytest.importorskip("pillow_heif")
    buf = io.BytesIO()
    pillow_heif.from_pillow(img).save(buf, quality=-1)  # lossless
    return buf.getvalue()


# Display P3: Apple's profile's colorants (D50) and the published linear P3 -> sRGB matrix; both independent
# of owl3's own conversion from the nclx chromaticities (Bradford to D50)
P3_D50 = ((0.5151, 0.2412, -0.0011), (0.2920, 0.6922, 0.0419), (0.1571, 0.0666, 0.7841))
P3_TO_SRGB = ((1.2249, -0.2247, 0.0), (-0.0420, 1.0419, 0.0), (-0.0197, -0.0786, 1.0979))


def _srgb_linear(v: float) -> float:
    return v / 12.92 if v <= 0.04045 else ((v + 0.055) / 1.055) ** 2.4


def _srgb_curve(x: float) -> float:
    x = min(max(x, 0.0), 1.0)
    return 12.92 * x if x <= 0.0031308 else 1.055 * x ** (1 / 2.4) - 0.055


def _heic_nclx(path, colour, primaries: int, transfer: int):
    """A lossless RGB HEIC whose colours are described by an nclx box (H.273 code points), no ICC."""
    pillow_heif = pytest.importorskip("pillow_heif")
    heif = pillow_heif.from_pillow(Image.new("RGB", (16, 16), colour))
    heif.info["nclx_profile"] = {"color_primaries": primaries, "transfer_characteristics": transfer,
                                 "matrix_coefficients": 0, "full_range_flag": 1}  # fmt: skip
    heif.save(path, quality=-1, chroma=444)
    assert not pillow_heif.open_heif(path).info.get("icc_profile")
    return path


def test_a_heic_nclx_colour_description_is_converted_to_srgb(tmp_path):
    stored = (200, 120, 60)
    # P3 primaries, linear light: what LittleCMS makes of a PNG tagged with Apple's P3 colorants at gamma 1
    heic = _heic_nclx(tmp_path / "linear.heic", stored, 12, 8)
    png = tmp_path / "linear.png"
    Image.new("RGB", (16, 16), stored).save(png, icc_profile=icc_profile(P3_D50))
    got, want = _px(load_image(heic), 8, 8), _px(load_image(png), 8, 8)
    assert all(abs(g - w) <= 2 for g, w in zip(got, want, strict=True)), (got, want)
    # Display P3 as phones write it (P3 primaries, the sRGB curve): the published matrix between the curves
    heic = _heic_nclx(tmp_path / "p3.heic", stored, 12, 13)
    lin = [_srgb_linear(v / 255) for v in stored]
    srgb = [sum(m * x for m, x in zip(row, lin, strict=True)) for row in P3_TO_SRGB]
    want = tuple(round(255 * _srgb_curve(x)) for x in srgb)
    got = _px(load_image(heic), 8, 8)
    assert want != stored and all(abs(g - w) <= 2 for g, w in zip(got, want, strict=True)), (got, want)
    assert _px(load_image(heic, official=True), 8, 8) == stored
    # descriptions that make no colour space are ignored, as a broken profile is
    p3 = dict(pytest.importorskip("pillow_heif").open_heif(heic).info["nclx_profile"])
    assert nclx_profile(p3) is not None
    assert nclx_profile({**p3, "color_primary_green_x": p3["color_primary_red_x"],
                         "color_primary_green_y": p3["color_primary_red_y"]}) is None  # fmt: skip
    assert nclx_profile({**p3, "color_primary_white_y": 0.0}) is None
    assert nclx_profile({"color_primaries": 12, "transfer_characteristics": 13}) is None
    # sRGB's own primaries, and an HDR transfer (PQ) that is not converted here: the stored values
    for primaries, transfer in ((1, 13), (12, 16)):
        heic = _heic_nclx(tmp_path / f"keep-{primaries}-{transfer}.heic", stored, primaries, transfer)
        assert _px(load_image(heic), 8, 8) == stored


def test_heic_pictures_are_read_through_pillow_heif(tmp_path, tiny_pipe):
    from owl3.processing.media import media_kind

    data = _heic(Image.new("RGB", (64, 48), (200, 30, 40)))
    (tmp_path / "photo.heic").write_bytes(data)
    (tmp_path / "photo").write_bytes(data)  # no suffix: told apart by its content
    for source in (tmp_path / "photo.heic", data):
        img = load_image(source)
        assert img.mode == "RGB" and img.size == (64, 48)
        assert _close(_px(img, 10, 10), (200, 30, 40), 3)
    assert media_kind(tmp_path / "photo") == "image"
    with pytest.raises(MediaTooLarge, match="64x48 = 3072 pixels, over the limit of 1000"):
        load_image(data, max_pixels=1000)
    answer = tiny_pipe.chat("What is this?", images=[tmp_path / "photo.heic"], max_new_tokens=3)
    assert answer == tiny_pipe.chat("What is this?", images=[load_image(data)], max_new_tokens=3)


def test_a_heic_photo_taken_sideways_is_turned_once(tmp_path):
    import io

    pillow_heif = pytest.importorskip("pillow_heif")
    img = Image.new("RGB", (64, 32), (200, 30, 40))
    img.paste((0, 0, 255), (0, 0, 4, 4))  # a blue corner, top left as stored
    exif = Image.Exif()
    exif[0x0112] = 6  # shown turned 90 degrees clockwise
    buf = io.BytesIO()
    pillow_heif.from_pillow(img).save(buf, quality=-1, exif=exif.tobytes())
    png = tmp_path / "same.png"
    img.save(png, exif=exif)
    got, want = load_image(buf.getvalue()), load_image(png)
    assert got.size == want.size == (32, 64)  # turned, and not turned twice (libheif turns it itself)
    assert _close(_px(got, 30, 1), (0, 0, 255), 3) and _close(_px(want, 30, 1), (0, 0, 255), 0)


def test_heic_without_pillow_heif_is_one_clear_error(monkeypatch):
    data = _heic(Image.new("RGB", (16, 16), (0, 0, 0)))
    monkeypatch.setitem(sys.modules, "pillow_heif", None)  # as if it were not installed
    with pytest.raises(Owl3Error, match=r"HEIC/HEIF picture, which needs pillow-heif: pip install"):
        load_image(data)


def test_an_animated_webp_is_a_video(tmp_path, tiny_pipe):
    """FFmpeg cannot decode animated WebP; the frames come through Pillow, sampled by the same rules as an
    animated GIF through PyAV, the rate from the frames' durations, transparency on white."""
    frames = [Image.new("RGBA", (64, 48), (30 * i, 0, 255 - 30 * i, 255)) for i in range(8)]
    frames[3].putpixel((0, 0), (0, 0, 0, 0))
    webp, gif = tmp_path / "clip.webp", tmp_path / "clip.gif"
    frames[0].save(webp, save_all=True, append_images=frames[1:], duration=100, loop=0, lossless=True)
    frames[0].save(gif, save_all=True, append_images=frames[1:], duration=100, loop=0)
    for kw in ({"frames": 4}, {"fps": 5}, {"frames": 3}):
        got = tiny_pipe.load_video(webp, **kw)
        assert [_px(f, 5, 5) for f in got] == [_px(f, 5, 5) for f in tiny_pipe.load_video(gif, **kw)], kw
    assert len(tiny_pipe.load_video(webp, fps=5)) == 4  # 10 frames a second, every second one
    assert _px(tiny_pipe.load_video(webp, frames=8)[3], 0, 0) == (255, 255, 255)
    assert tiny_pipe.load_video(webp.read_bytes(), frames=4)[0].size == (64, 48)
    with pytest.raises(MediaTooLarge, match="64x48 = 3072 pixels per frame"):
        tiny_pipe.load_video(webp, frames=4, max_pixels=1000)
    answer = tiny_pipe.chat("<|video|>What happens?", videos=[webp], max_new_tokens=3, frames=4)
    assert answer == tiny_pipe.chat("<|video|>What happens?", videos=[gif], max_new_tokens=3, frames=4)
