"""The server's media rules on their own: which addresses a media URL may reach (every redirect hop
checked), byte and time limits of a fetch, pixel caps before decoding, and stop strings on streamed text.
"""

from __future__ import annotations

import http.server
import ipaddress
import struct
import threading
import time
import zlib

import pytest
from PIL import Image

from owl3.serving.fetch import fetch, is_public
from owl3.serving.media import MediaPolicy, decode_image, decode_video
from owl3.serving.protocol import APIError
from owl3.serving.text import TextStream
from tests.serve_helpers import png_bytes, write_video


@pytest.mark.parametrize(
    "address,public",
    [
        ("8.8.8.8", True),
        ("2001:4860:4860::8888", True),
        ("127.0.0.1", False),
        ("10.0.0.7", False),
        ("172.16.5.4", False),
        ("192.168.1.1", False),
        ("169.254.169.254", False),  # cloud metadata
        ("100.64.0.1", False),  # carrier-grade NAT
        ("0.0.0.0", False),
        ("224.0.0.1", False),
        ("::1", False),
        ("fe80::1", False),
        ("fd00::1", False),
        ("::ffff:127.0.0.1", False),  # IPv4-mapped loopback
        ("64:ff9b::7f00:1", False),  # NAT64 of loopback
        ("2002:7f00:1::", False),  # 6to4 of loopback
    ],
)
def test_only_public_addresses_are_public(address, public):
    assert is_public(ipaddress.ip_address(address)) is public


class _Handler(http.server.BaseHTTPRequestHandler):
    routes: dict = {}

    def do_GET(self):
        status, headers, body, delay = self.routes.get(self.path, (404, {}, b"", 0))
        time.sleep(delay)
        self.send_response(status)
        for k, v in headers.items():
            self.send_header(k, v)
        if not self.path.endswith("-unsized"):  # else HTTP/1.0: the body ends when the connection does
            self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        try:
            self.wfile.write(body)
        except (BrokenPipeError, ConnectionResetError):  # the client gave up (the timeout test)
            pass

    def log_message(self, *a):
        pass


@pytest.fixture(scope="module")
def hosts():
    """Two servers: 127.0.0.1 (the "public" host of these tests) and 127.0.0.2 (the "private" one)."""
    servers = []
    for address in ("127.0.0.1", "127.0.0.2"):
        httpd = http.server.ThreadingHTTPServer((address, 0), _Handler)
        threading.Thread(target=httpd.serve_forever, daemon=True).start()
        servers.append(httpd)
    first, second = (f"http://{s.server_address[0]}:{s.server_address[1]}" for s in servers)
    image = png_bytes(Image.new("RGB", (4, 4), (9, 9, 9)))
    _Handler.routes = {
        "/image.png": (200, {}, image, 0),
        "/to-first": (302, {"Location": "/image.png"}, b"", 0),
        "/to-second": (302, {"Location": f"{second}/image.png"}, b"", 0),
        "/loop": (302, {"Location": "/loop"}, b"", 0),
        "/slow": (200, {}, image, 1.5),
        "/big": (200, {}, b"x" * 5000, 0),
        "/big-unsized": (200, {}, b"x" * 5000, 0),
    }
    yield first, second, image
    for s in servers:
        s.shutdown()


def only(*allowed):
    return lambda ip: str(ip) in allowed


def test_fetch_follows_redirects_and_checks_every_hop(hosts):
    first, second, image = hosts
    assert fetch(f"{first}/to-first", timeout=5, max_bytes=1 << 20, allow_address=only("127.0.0.1")) == image
    both = only("127.0.0.1", "127.0.0.2")
    assert fetch(f"{first}/to-second", timeout=5, max_bytes=1 << 20, allow_address=both) == image
    with pytest.raises(APIError) as e:  # the redirect leads to a host that is not allowed
        fetch(f"{first}/to-second", timeout=5, max_bytes=1 << 20, allow_address=only("127.0.0.1"))
    assert (e.value.status, e.value.code) == (400, "media_host_not_allowed")
    with pytest.raises(APIError) as e:  # the default: loopback is never fetched
        fetch(f"{first}/image.png", timeout=5, max_bytes=1 << 20)
    assert e.value.code == "media_host_not_allowed"


@pytest.mark.parametrize(
    "path,timeout,max_bytes,code",
    [
        ("/loop", 5, 1 << 20, "media_fetch_failed"),
        ("/missing", 5, 1 << 20, "media_fetch_failed"),
        ("/slow", 0.3, 1 << 20, "media_fetch_failed"),
        ("/big", 5, 1000, "media_too_large"),
        ("/big-unsized", 5, 1000, "media_too_large"),
    ],
)
def test_fetch_limits(hosts, path, timeout, max_bytes, code):
    with pytest.raises(APIError) as e:
        fetch(hosts[0] + path, timeout=timeout, max_bytes=max_bytes, allow_address=only("127.0.0.1"))
    assert (e.value.status, e.value.code) == (400, code)


def _png_header(width: int, height: int) -> bytes:
    """A PNG that claims width x height pixels and holds almost nothing: a decompression bomb's header."""

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    ihdr = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", zlib.compress(b"\0" * 64))


def test_images_over_the_pixel_cap_are_refused_before_decoding():
    before = Image.MAX_IMAGE_PIXELS
    policy = MediaPolicy(max_image_pixels=10_000)
    for w, h in ((101, 100), (100_000, 100_000), (2**31 - 1, 2**31 - 1)):
        with pytest.raises(APIError) as e:
            decode_image(_png_header(w, h), "img", policy)
        assert e.value.code in ("image_too_large", "invalid_image") and e.value.status == 400
    assert decode_image(png_bytes(Image.new("RGB", (100, 100))), "img", policy).size == (100, 100)
    assert Image.MAX_IMAGE_PIXELS == before  # the process-wide setting is left alone


def test_video_frames_over_the_pixel_cap_are_refused(tmp_path):
    write_video(tmp_path / "v.mp4", n_frames=4, size=64)
    data = (tmp_path / "v.mp4").read_bytes()
    with pytest.raises(APIError) as e:
        decode_video(data, "v", MediaPolicy(max_image_pixels=64 * 64 - 1), frames=2, fps=None, max_frames=4)
    assert e.value.code == "image_too_large"
    frames = decode_video(data, "v", MediaPolicy(), frames=2, fps=None, max_frames=4)
    assert len(frames) == 2 and frames[0].size == (64, 64)


def test_stop_strings_cut_the_text_and_are_never_sent(demo_pipe):
    tok = demo_pipe.tokenizer
    text = "The red circle is left of the blue square. Done."
    ids = tok.encode(text, add_special_tokens=False).ids
    for stop, expected in (
        (["blue"], "The red circle is left of the "),
        ([". D", "zz"], "The red circle is left of the blue square"),
        (["absent"], text),
    ):
        stream = TextStream(tok, stop)
        sent = ""
        for i in ids:
            sent += stream.push(i)
            assert not any(s in sent for s in stop)
            if stream.stopped:
                break
        sent += stream.finish()
        assert sent == expected == stream.text
        assert stream.stopped is (expected != text)


def test_streamed_text_equals_the_decoded_text_with_multibyte_characters(demo_pipe):
    tok = demo_pipe.tokenizer
    text = "Größe: 猫 and 🦉, fine."
    ids = tok.encode(text, add_special_tokens=False).ids
    stream = TextStream(tok, ["zzz"])
    pieces = [stream.push(i) for i in ids] + [stream.finish()]
    assert "".join(pieces) == text and all("\ufffd" not in p for p in pieces)


def test_a_resent_video_is_sampled_once(tmp_path):
    # the same bytes and sampling come back with the next turn: the frames of the first decode, not a new one
    from owl3.bench.video import write_test_video
    from owl3.serving.media import ClipCache, MediaPolicy, decode_video

    data = write_test_video(tmp_path / "v.mp4", seconds=2, fps=10, gop=10).read_bytes()
    cache, policy = ClipCache(max_clips=1), MediaPolicy()
    first = decode_video(data, "v", policy, frames=4, fps=None, max_frames=8, cache=cache)
    again = decode_video(data, "v", policy, frames=4, fps=None, max_frames=8, cache=cache)
    assert len(first) == 4 and all(a is b for a, b in zip(first, again, strict=True))
    other = decode_video(data, "v", policy, frames=3, fps=None, max_frames=8, cache=cache)  # other sampling
    assert len(other) == 3 and not any(o is f for o in other for f in first)
    assert len(decode_video(data, "v", policy, frames=4, fps=None, max_frames=8, cache=cache)) == 4
