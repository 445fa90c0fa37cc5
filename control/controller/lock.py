"""Leadership: one controller acts at a time, through a PostgreSQL session advisory lock per loop.

A session lock (not a transaction lock) because a loop makes provider calls that must not run inside a database
transaction. If the worker dies its connection closes and PostgreSQL releases the lock: no stale leader, no lease.
"""

from __future__ import annotations

import zlib
from collections.abc import Iterator
from contextlib import contextmanager

from django.db import connection


def lock_id(name: str) -> int:
    # A stable 31-bit key per loop name (Python's hash() changes between processes).
    return zlib.crc32(f"switchyard.controller.{name}".encode()) & 0x7FFFFFFF


@contextmanager
def leader(name: str) -> Iterator[bool]:
    """Yields True when this process holds the loop's lock (and releases it after), False when another one does."""
    key = lock_id(name)
    with connection.cursor() as cur:
        cur.execute("SELECT pg_try_advisory_lock(%s)", [key])
        held = bool(cur.fetchone()[0])
    try:
        yield held
    finally:
        if held:
            with connection.cursor() as cur:
                cur.execute("SELECT pg_advisory_unlock(%s)", [key])
