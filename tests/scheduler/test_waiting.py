"""The priority wait queue: limits, most important class first, FIFO, reserved grants, give-ups."""

from __future__ import annotations

import asyncio

from control.scheduler.waiting import Waiter, WaitQueue


def test_order_limits_and_give_ups() -> None:
    async def go() -> None:
        q = WaitQueue()
        batch = q.add("batch", "m", frozenset(), limit=5, rid=1)
        std = [q.add("standard", "m", frozenset(), limit=2, rid=r) for r in (2, 3)]
        assert q.add("standard", "m", frozenset(), limit=2) is None  # full
        assert q.add("realtime", "m", frozenset(), limit=0) is None  # never queued
        rt = q.add("realtime", "m", frozenset(), limit=5, rid=4)
        other = q.add("standard", "other", frozenset(), limit=3, rid=5)
        assert q.counts() == {"batch": 1, "standard": 3, "realtime": 1} and len(q) == 5
        assert all(w is not None for w in (batch, rt, other, *std))
        assert std[0] is not None
        std[0].future.cancel()  # gave up: skipped and uncounted
        slots = {"m": 2, "other": 0}
        granted: list[int] = []

        def grant(w: Waiter) -> str | None:
            if slots[w.model] == 0:
                return None
            slots[w.model] -= 1
            granted.append(w.rid)
            return f"node-for-{w.rid}"

        assert q.dispatch(["realtime", "standard", "batch"], grant) == 2
        assert granted == [4, 3]  # realtime first, then the standard waiter still waiting; batch waits
        assert rt is not None and rt.future.result() == "node-for-4"
        assert q.counts() == {"batch": 1, "standard": 1, "realtime": 0}
        assert other is not None
        q.remove(other)
        assert q.counts()["standard"] == 0
        q.remove(other)  # twice is harmless
        assert q.counts()["standard"] == 0

    asyncio.run(go())
