"""The bounded priority queue where non-sheddable requests wait while the fleet is saturated.

One FIFO per (class, model); whenever capacity may have freed (a request finished, new samples, a quarantine ended)
the gateway calls `dispatch`, which serves the most important class first and hands each waiter a node that is
already reserved for it, so two waiters can never be given the same last slot. A model that found no room is not
tried again in the same round, so a dispatch costs O(classes x models), not O(waiters).
"""

from __future__ import annotations

import asyncio
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any


@dataclass(eq=False)
class Waiter:
    cls: str
    model: str
    exclude: frozenset[str]
    rid: int = 0  # the request id the node is reserved under
    prefix: tuple[int, ...] = ()  # the prompt's block keys (cache-aware routing)
    stream: bool = False  # the answer is streamed (the expected_ttft scorer counts)
    answer: int = 0  # the answer length asked for (the slo rule routes by it); 0: not given
    prompt: int = 0  # the prompt's estimated tokens (the node's prefill backlog counts them); 0: not known
    future: asyncio.Future[Any] = field(default_factory=lambda: asyncio.get_running_loop().create_future())


class WaitQueue:
    def __init__(self) -> None:
        self.queues: dict[str, dict[str, deque[Waiter]]] = {}
        self.waiting: dict[str, int] = {}  # class -> waiters not yet served or given up

    def counts(self) -> dict[str, int]:
        return dict(self.waiting)

    def __len__(self) -> int:
        return sum(self.waiting.values())

    def add(self, cls: str, model: str, exclude: frozenset[str], limit: int, rid: int = 0,
            prefix: tuple[int, ...] = (), stream: bool = False, answer: int = 0, prompt: int = 0) -> Waiter | None:
        """A new waiter, or None when the class's queue is full (or the class is never queued: limit 0)."""
        if self.waiting.get(cls, 0) >= limit:
            return None
        waiter = Waiter(cls, model, exclude, rid, prefix, stream, answer, prompt)
        self.queues.setdefault(cls, {}).setdefault(model, deque()).append(waiter)
        self.waiting[cls] = self.waiting.get(cls, 0) + 1
        return waiter

    def remove(self, waiter: Waiter) -> None:
        """A waiter that gave up (deadline passed); no-op when dispatch already took it off."""
        q = self.queues.get(waiter.cls, {}).get(waiter.model)
        if q is None:
            return
        try:
            q.remove(waiter)
        except ValueError:
            return
        self.waiting[waiter.cls] -= 1

    def dispatch(self, order: list[str], grant: Callable[[Waiter], Any]) -> int:
        """Offer capacity to waiters, most important class first, FIFO within a class and model. `grant(waiter)`
        returns the node reserved for it, or None when its model has no room."""
        served, full_models = 0, set()
        for cls in order + [c for c in self.queues if c not in order]:
            for model, q in self.queues.get(cls, {}).items():
                if model in full_models:
                    continue
                while q:
                    waiter = q[0]
                    if waiter.future.done():  # cancelled: its request gave up
                        q.popleft()
                        self.waiting[cls] -= 1
                        continue
                    node = grant(waiter)
                    if node is None:
                        full_models.add(model)
                        break
                    q.popleft()
                    self.waiting[cls] -= 1
                    waiter.future.set_result(node)
                    served += 1
        return served
