"""Fetching a remote image or video over http(s), without letting a request reach the server's own network.

A URL in a request is chosen by the client, so fetching it naively lets anyone who can reach the server
make it read from loopback, the private network or a cloud metadata address (SSRF). Here every hop is
checked: the host is resolved once, every address it resolves to must pass `allow_address` (public
addresses only, by default), and the connection goes to that checked address (no second DNS lookup that
could answer differently). Redirects are followed by hand, each new location checked the same way.
The read is bounded in bytes and in total time. Standard library only; this is not a general HTTP client
(no cookies, no proxies, no compression, GET only).
"""

from __future__ import annotations

import http.client
import ipaddress
import socket
import ssl
import time
from collections.abc import Callable
from urllib.parse import urljoin, urlsplit

from owl3.serving.protocol import bad_request

IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address
MAX_REDIRECTS = 5
CHUNK = 1 << 16


NAT64 = ipaddress.ip_network("64:ff9b::/96")


def is_public(ip: IPAddress) -> bool:
    """A globally routable unicast address: not loopback, private, link-local, shared, reserved, ..."""
    if isinstance(ip, ipaddress.IPv6Address):
        # an IPv6 address that carries an IPv4 one (::ffff:127.0.0.1, 2002:7f00:1::, 64:ff9b::7f00:1)
        # leads to that IPv4 address: judge both
        inner = (
            ip.ipv4_mapped
            or ip.sixtofour
            or (ipaddress.IPv4Address(int(ip) & 0xFFFFFFFF) if ip in NAT64 else None)
        )
        if inner is not None and not is_public(inner):
            return False
    return ip.is_global and not ip.is_multicast


def resolve(host: str, port: int) -> list[IPAddress]:
    try:
        infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)
    except (socket.gaierror, UnicodeError):
        raise bad_request(f"cannot resolve the media host {host[:100]!r}", code="invalid_media_url") from None
    # scope ids ("fe80::1%eth0") are dropped: ipaddress parses the address part
    return [ipaddress.ip_address(str(info[4][0]).split("%")[0]) for info in infos]


class _PinnedHTTP(http.client.HTTPConnection):
    """An HTTP connection to a host name (Host header) made to one already checked address."""

    def __init__(self, host: str, port: int, address: str, timeout: float) -> None:
        super().__init__(host, port, timeout=timeout)
        self._address = address

    def connect(self) -> None:
        self.sock = socket.create_connection((self._address, self.port), self.timeout)


class _PinnedHTTPS(_PinnedHTTP):
    default_port = 443

    def connect(self) -> None:
        super().connect()
        # certificate checked against the host name, not the address
        self.sock = ssl.create_default_context().wrap_socket(self.sock, server_hostname=self.host)


def fetch(
    url: str,
    *,
    timeout: float,
    max_bytes: int,
    allow_address: Callable[[IPAddress], bool] = is_public,
    what: str = "media",
) -> bytes:
    """GET `url` (http or https), following up to MAX_REDIRECTS redirects; every failure is a 400."""
    deadline = time.monotonic() + timeout
    for _ in range(MAX_REDIRECTS + 1):
        parts = urlsplit(url)
        if parts.scheme not in ("http", "https") or not parts.hostname:
            raise bad_request(f"the {what} URL must be http(s)://host/...", code="invalid_media_url")
        try:
            port = parts.port or (443 if parts.scheme == "https" else 80)
        except ValueError:
            raise bad_request(f"the {what} URL has a bad port", code="invalid_media_url") from None
        host = parts.hostname
        addresses = resolve(host, port)
        refused = [a for a in addresses if not allow_address(a)]
        if refused or not addresses:
            raise bad_request(
                f"the {what} host {host[:100]!r} resolves to a loopback, private or reserved address "
                f"({refused[0] if refused else 'none'}); the server does not fetch from there",
                code="media_host_not_allowed",
            )
        cls = _PinnedHTTPS if parts.scheme == "https" else _PinnedHTTP
        conn = cls(host, port, str(addresses[0]), timeout=max(0.1, deadline - time.monotonic()))
        try:
            target = (parts.path or "/") + (f"?{parts.query}" if parts.query else "")
            conn.request("GET", target, headers={"User-Agent": "owl3", "Accept": "*/*"})
            resp = conn.getresponse()
            if resp.status in (301, 302, 303, 307, 308):
                location = resp.getheader("Location")
                if not location:
                    raise bad_request(f"the {what} URL redirects nowhere", code="media_fetch_failed")
                url = urljoin(url, location)
                continue
            if resp.status != 200:
                raise bad_request(
                    f"fetching the {what} URL answered HTTP {resp.status}", code="media_fetch_failed"
                )
            length = resp.getheader("Content-Length")
            if length and length.isdigit() and int(length) > max_bytes:
                raise bad_request(f"the {what} is larger than {max_bytes} bytes", code="media_too_large")
            return _read(resp, max_bytes, deadline, what)
        except (OSError, http.client.HTTPException) as e:  # refused, reset, TLS, timeout, bad reply
            raise bad_request(
                f"fetching the {what} URL failed ({type(e).__name__})", code="media_fetch_failed"
            ) from None
        finally:
            conn.close()
    raise bad_request(f"the {what} URL redirects more than {MAX_REDIRECTS} times", code="media_fetch_failed")


def _read(resp: http.client.HTTPResponse, max_bytes: int, deadline: float, what: str) -> bytes:
    out = bytearray()
    while True:
        if time.monotonic() > deadline:
            raise bad_request(f"fetching the {what} took too long", code="media_fetch_failed")
        block = resp.read1(CHUNK) if hasattr(resp, "read1") else resp.read(CHUNK)
        if not block:
            return bytes(out)
        out += block
        if len(out) > max_bytes:
            raise bad_request(f"the {what} is larger than {max_bytes} bytes", code="media_too_large")
