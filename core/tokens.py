"""Bearer secrets for users and nodes: random, shown once, stored only as a SHA-256 digest.

The secrets carry 256 bits of randomness, so a fast hash is enough (no password stretching needed) and lets the
lookup be a single indexed equality match.
"""

from __future__ import annotations

import hashlib
import secrets


def digest(token: str) -> str:
    return hashlib.sha256(token.encode()).hexdigest()


def new_token(kind: str) -> tuple[str, str]:
    """Return (plain token, digest). `kind` ("node", "user") is part of the token so a leaked one is recognisable."""
    plain = f"sy_{kind}_{secrets.token_urlsafe(32)}"
    return plain, digest(plain)


def display_prefix(token: str) -> str:
    """Enough of the token to tell tokens apart in a list, far too little to guess the rest."""
    return token[:16]
