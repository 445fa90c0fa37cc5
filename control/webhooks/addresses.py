"""Where the sender may connect: URL checks when a URL is accepted, and address checks when a socket is opened.

Checking a hostname once and connecting later would let DNS answer "public" to the check and "127.0.0.1" to the
connection (DNS rebinding). So the check lives in the network backend the HTTP client connects through: it resolves
the name itself, refuses the connection when any resolved address is not allowed, and connects to the address it
checked. TLS still verifies the certificate against the hostname (the TLS layer is above this socket).
"""

from __future__ import annotations

import ipaddress
import socket
from typing import Any
from urllib.parse import urlsplit

import httpcore

MAX_URL = 2000


class InvalidURL(ValueError):
    """A URL the sender will never use (wrong scheme, credentials in it, no host ...)."""


class AddressRefused(Exception):
    """A connection to a private/loopback/link-local/multicast/reserved address, refused before any byte is sent."""


def check_url(url: Any) -> str:
    """The URL if the sender may use it; InvalidURL saying what is wrong otherwise (the address is checked later)."""
    if not isinstance(url, str) or not url.strip():
        raise InvalidURL("a URL is required")
    url = url.strip()
    if len(url) > MAX_URL:
        raise InvalidURL(f"the URL is longer than {MAX_URL} characters")
    if any(ord(c) < 33 or ord(c) == 127 for c in url):
        raise InvalidURL("the URL contains spaces or control characters")
    try:
        parts = urlsplit(url)
        port = parts.port
    except ValueError as exc:
        raise InvalidURL(f"not a valid URL: {exc}") from None
    if parts.scheme not in ("http", "https"):
        raise InvalidURL(f"scheme {parts.scheme or '(none)'!r} is not allowed; use http:// or https://")
    if parts.username is not None or parts.password is not None or "@" in parts.netloc:
        raise InvalidURL("credentials in the URL are not allowed; authenticate the receiver by the signature")
    if not parts.hostname:
        raise InvalidURL("the URL has no host")
    if port == 0:
        raise InvalidURL("port 0 is not a valid port")
    return url


def refusal(ip: ipaddress.IPv4Address | ipaddress.IPv6Address, internal: bool) -> str | None:
    """Why the sender must not connect to `ip` (None: it may)."""
    if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped is not None:
        ip = ip.ipv4_mapped  # ::ffff:127.0.0.1 is 127.0.0.1
    if ip.is_unspecified or ip.is_multicast:
        return "the unspecified address" if ip.is_unspecified else "a multicast address"
    if internal:
        return None
    for kind in ("loopback", "link_local", "private", "reserved"):  # most specific word first
        if getattr(ip, f"is_{kind}"):
            return f"a {kind.replace('_', '-')} address (an admin can mark the receiver internal to allow it)"
    if not ip.is_global:  # shared address space (100.64/10), benchmarking nets and the like
        return "not a public address (an admin can mark the receiver internal to allow it)"
    return None


def resolve(host: str, port: int) -> list[ipaddress.IPv4Address | ipaddress.IPv6Address]:
    try:
        infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)
    except socket.gaierror as exc:
        raise httpcore.ConnectError(f"cannot resolve {host}: {exc}") from None
    seen: list[ipaddress.IPv4Address | ipaddress.IPv6Address] = []
    for info in infos:
        ip = ipaddress.ip_address(str(info[4][0]).split("%", 1)[0])
        if ip not in seen:
            seen.append(ip)
    return seen


class GuardedBackend(httpcore.SyncBackend):
    """httpcore's socket backend, connecting only to addresses `refusal()` allows (checked at connect time)."""

    def __init__(self, internal: bool) -> None:
        self.internal = internal

    def connect_tcp(self, host: str, port: int, timeout: float | None = None, local_address: str | None = None,
                    socket_options: Any = None) -> httpcore.NetworkStream:
        addresses = resolve(host, port)
        if not addresses:
            raise httpcore.ConnectError(f"{host} has no address")
        # Every address must pass: a name that answers one public and one private address is refused outright,
        # rather than hoping the connection lands on the public one.
        for ip in addresses:
            why = refusal(ip, self.internal)
            if why is not None:
                shown = str(ip) if host == str(ip) else f"{ip} ({host} resolves to it)"
                raise AddressRefused(f"refused to connect to {shown}: it is {why}")
        last: Exception | None = None
        for ip in addresses:
            try:
                return super().connect_tcp(str(ip), port, timeout, local_address, socket_options)
            except httpcore.ConnectError as exc:
                last = exc
        assert last is not None
        raise last
