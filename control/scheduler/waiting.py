"""The bounded priority queue where non-sheddable requests wait while the fleet is saturated.

One FIFO per class; whenever capacity may have freed (a request finished, new samples, a quarantine ended) the
gateway calls `dispatch`, which serves the most important class first and hands each waiter a node that is already
reserved for it, so two waiters can never be given the same last slot.
"""

from __future__ import annotations

import asyncio
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any


@dataclass
class Waiter:
    cls: str
    model: str
    exclude: frozenset[str]
    rid: int = 0  # the request id the node is reserved under
    future: asyncio.Future[Any] = field(default_factory=lambda: asyncio.get_running_loop().create_future())


class WaitQueue:
    def __init__(self) -> None:
        self.queues: dict[str, deque[Waiter]] = {}

    def counts(self) -> dict[str, int]:
        return {cls: sum(1 for w in q if not w.future.done()) for cls, q in self.queues.items()}

    def __len__(self) -> int:
        return sum(len(q) for q in self.queues.values())

    def add(self, cls: str, model: str, exclude: frozenset[str], limit: int, rid: int = 0) -> Waiter | None:
        """A new waiter, or None when the class's queue is full (or the class is never queued: limit 0)."""
        q = self.queues.setdefault(cls, deque())
        while q and q[0].future.done():
            q.popleft()
        if sum(1 for w in q if not w.future.done()) >= limit:
            return None
        waiter = Waiter(cls, model, exclude, rid)
        q.append(waiter)
        return waiter

    def remove(self, waiter: Waiter) -> None:
        q = self.queues.get(waiter.cls)
        if q is not None:
            try:
                q.remove(waiter)
            except ValueError:
                pass

    def dispatch(self, order: list[str], grant: Callable[[Waiter], Any]) -> int:
        """Offer capacity to waiters, most important class first, FIFO within a class. `grant(waiter)` returns the
        reserved node or None; a model that found no room is not tried again in this round."""
        served, full_models = 0, set()
        for cls in order + [c for c in self.queues if c not in order]:
            q = self.queues.get(cls)
            if not q:
                continue
            keep: deque[Waiter] = deque()
            while q:
                waiter = q.popleft()
                if waiter.future.done():
                    continue
                if waiter.model in full_models:
                    keep.append(waiter)
                    continue
                node = grant(waiter)
                if node is None:
                    full_models.add(waiter.model)
                    keep.append(waiter)
                else:
                    waiter.future.set_result(node)
                    served += 1
            self.queues[cls] = keep
        return served
