"""Node-token lookups for ingest from an in-process cache, so that a push costs no token query.

An entry is tagged with the revocation counter (`sy:tokens:revocations`, dashboard/fleet/revocation.py) as read
before its database lookup. Every push reads the counter in the Redis round trip it makes anyway (rate limit and
power caps, ingest.redis_round); an entry whose tag differs is not trusted: the token is looked up again. So a
revocation announced through the one choke point is honoured by every worker from the next push on. The TTL bounds
what a change made outside it (raw SQL) can cost: a push whose entry has expired is answered as any other
cached push, and its commit group asks the database about every such token in one query before storing anything
(ingest.admit), rather than sending each of them down the uncached path (a thread, two Redis round trips and a
query of its own: a twelfth of all pushes at a 5-s interval and a 60-s TTL). The node's mutable fields (state, interval, pool, endpoint, ...)
are re-read by the committer for every group (group_commit.py), so they are never older than the push's commit.
"""

from __future__ import annotations

import threading
import time
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from dashboard.fleet.ingest import NodeInfo

TTL_S = 60.0
MAX_ENTRIES = 100_000  # a fleet's worth; cleared when full, so a flood of tokens cannot grow memory without bound


class NodeTokenCache:
    def __init__(self) -> None:
        self._entries: dict[str, tuple[float, bytes | None, NodeInfo]] = {}  # digest -> (expires, tag, node)
        self._lock = threading.Lock()

    def get(self, dig: str) -> tuple[NodeInfo, bytes | None] | None:
        """(node, the counter its lookup saw), or None when the database must be asked."""
        entry = self._entries.get(dig)
        if entry is None or entry[0] < time.monotonic():
            return None
        return entry[2], entry[1]

    def get_any(self, dig: str) -> tuple[NodeInfo, bytes | None, bool] | None:
        """(node, tag, expired): an entry past its TTL too, for a caller that has the token looked up again before
        anything of the push is stored (ingest.admit, one query for a commit group's expired tokens)."""
        entry = self._entries.get(dig)
        if entry is None:
            return None
        return entry[2], entry[1], entry[0] < time.monotonic()

    def put(self, dig: str, node: NodeInfo, tag: bytes | None) -> None:
        with self._lock:
            if len(self._entries) >= MAX_ENTRIES:
                self._entries.clear()
            self._entries[dig] = (time.monotonic() + TTL_S, tag, node)

    def drop(self, dig: str) -> None:
        with self._lock:
            self._entries.pop(dig, None)

    def clear(self) -> None:
        with self._lock:
            self._entries.clear()


cache = NodeTokenCache()
