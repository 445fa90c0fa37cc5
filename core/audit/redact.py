"""What an audit event may hold: secrets never, URLs only as scheme, host and a fingerprint.

Audit events are append-only and readable by every viewer, so whatever reaches one can never be taken back. A Slack
incoming-webhook URL is itself the credential (the path is the key), a provider URL may carry a signed query, and a
token pasted into a field is a token. The code that records an event passes what it means to record; `record()`
runs every before/after/details value through `scrub()` as the one choke point, so a new action cannot leak by
forgetting.

- A value under a secret-named key (`secret`, `password`, `*_token`, ...) becomes "[redacted]" when it is a string;
  booleans and numbers under such keys (`secret_changed: true`) say nothing secret and are kept.
- Every URL inside any string becomes `scheme://host[:port]/… [sha256:1a2b3c4d]`: enough to tell which receiver and
  whether it changed, never its path, query, fragment or user info.
- Every Switchyard token (`sy_user_…`, `sy_node_…`, `sy_internal_…`) inside any string becomes its display prefix.
"""

from __future__ import annotations

import hashlib
import re
from typing import Any
from urllib.parse import urlsplit

REDACTED = "[redacted]"

# Exact key names, and suffixes, that name a credential. Deliberately not a substring match: `token_budget`,
# `tokens` (a list of token prefixes) and `secret_changed` (a flag) are facts, not secrets.
SECRET_KEYS = frozenset({
    "secret", "password", "passwd", "token", "digest", "api_key", "apikey", "authorization", "signature",
    "credentials", "private_key", "access_key", "secret_key", "client_secret", "session_token", "bearer",
})
SECRET_SUFFIXES = ("_secret", "_password", "_token", "_api_key", "_access_key", "_private_key", "_credentials")

# Possessive, and not followed by "…": a URL redacted once is left as it is (scrub() is idempotent, which the
# migration that redacts old events relies on).
URL_RE = re.compile(r"\b[a-zA-Z][a-zA-Z0-9+.\-]*://[^\s\"'<>…]++(?!…)")
TOKEN_RE = re.compile(r"\bsy_(user|node|internal)_[A-Za-z0-9_\-]{9,}")  # longer than a display prefix
TOKEN_PREFIX_CHARS = 16  # as core.tokens.display_prefix: "sy_user_" + 8 characters


def is_secret_key(key: str) -> bool:
    k = key.lower().replace("-", "_")
    return k in SECRET_KEYS or k.endswith(SECRET_SUFFIXES)


def fingerprint(value: str) -> str:
    return hashlib.sha256(value.encode()).hexdigest()[:8]


def redact_url(url: str) -> str:
    """`https://hooks.slack.com/… [sha256:1a2b3c4d]`: the scheme and host (port kept) and the first 8 hex of the
    SHA-256 of the whole URL, so two receivers on one host, or a changed key, still read as different."""
    try:
        parts = urlsplit(url)
        host = parts.hostname or ""
        port = parts.port
    except ValueError:
        return f"[unparseable URL sha256:{fingerprint(url)}]"
    if ":" in host:
        host = f"[{host}]"
    netloc = f"{host}:{port}" if port is not None else host
    return f"{parts.scheme}://{netloc}/… [sha256:{fingerprint(url)}]"


def redact_text(text: str, urls: bool = True) -> str:
    """A free-text value with every Switchyard token (and, unless `urls` is False, every URL) inside it redacted."""
    if urls and "://" in text:
        text = URL_RE.sub(lambda m: redact_url(m.group(0)), text)
    if "sy_" in text:
        text = TOKEN_RE.sub(lambda m: m.group(0)[:TOKEN_PREFIX_CHARS] + "…", text)
    return text


def scrub(value: Any, key: str = "") -> Any:
    """A JSON-able value with secrets removed (see the module's docstring); the input is not modified."""
    if isinstance(value, dict):
        return {k: scrub(v, str(k)) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [scrub(v, key) for v in value]
    if isinstance(value, str):
        if key and is_secret_key(key) and value not in ("", "***", REDACTED):
            return REDACTED
        return redact_text(value)
    return value
