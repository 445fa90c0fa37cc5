"""Webhook signatures, standard library only, so a receiver can copy this file as it is.

Switchyard sends `X-Switchyard-Signature: t=<unix seconds>,v1=<hex HMAC-SHA256(secret, "<t>.<raw body>")>`.
A receiver recomputes the HMAC over the exact bytes it received and refuses a timestamp more than `tolerance`
seconds away from its own clock, so a captured request cannot be replayed later:

    from verify import verify, SignatureError
    try:
        verify(SECRET, request.headers["X-Switchyard-Signature"], raw_body)
    except SignatureError as exc:
        return 400, str(exc)
"""

from __future__ import annotations

import hashlib
import hmac
import time

HEADER = "X-Switchyard-Signature"
TOLERANCE_S = 300


class SignatureError(ValueError):
    """The signature is missing, malformed, wrong, or too old (a replay)."""


def sign(secret: str, body: bytes, t: int | None = None) -> str:
    """The header value for `body` signed at unix time `t` (now by default)."""
    t = int(time.time()) if t is None else int(t)
    mac = hmac.new(secret.encode(), f"{t}.".encode() + body, hashlib.sha256).hexdigest()
    return f"t={t},v1={mac}"


def verify(secret: str, header: str | None, body: bytes, now: float | None = None,
           tolerance: int = TOLERANCE_S) -> int:
    """Check `header` against `body`; returns the signed timestamp, or raises SignatureError saying why."""
    if not header:
        raise SignatureError(f"missing {HEADER} header")
    parts: dict[str, list[str]] = {}
    for item in header.split(","):
        key, sep, value = item.strip().partition("=")
        if not sep:
            raise SignatureError(f"malformed {HEADER}: expected t=<unix>,v1=<hex>")
        parts.setdefault(key, []).append(value)
    try:
        t = int(parts["t"][0])
    except (KeyError, ValueError):
        raise SignatureError(f"malformed {HEADER}: no integer t=") from None
    candidates = parts.get("v1", [])
    if not candidates:
        raise SignatureError(f"malformed {HEADER}: no v1= signature")
    now = time.time() if now is None else now
    if abs(now - t) > tolerance:
        raise SignatureError(f"timestamp {t} is {abs(now - t):.0f} s from now (limit {tolerance} s): replay refused")
    expected = hmac.new(secret.encode(), f"{t}.".encode() + body, hashlib.sha256).hexdigest()
    # Several v1= values may be present while a secret is being rotated; any one matching is enough.
    if not any(hmac.compare_digest(expected, c) for c in candidates):
        raise SignatureError("signature does not match the body (wrong secret or altered body)")
    return t
