"""Getting a node for a request: a reserved node at once, a 429 for a sheddable class when the fleet is saturated,
else a place in the bounded priority queue (waiting.py) until capacity frees or the class's timeout passes."""

from __future__ import annotations

import asyncio
import time

from control.scheduler.config import Priorities, default_priorities
from control.scheduler.core import Node, Scheduler
from control.scheduler.prefix_index import Keys
from control.scheduler.replies import Reply
from control.scheduler.waiting import Waiter, WaitQueue


class Admission:
    def __init__(self, sched: Scheduler, counters: dict[str, int]) -> None:
        self.sched = sched
        self.counters = counters
        self.priorities: Priorities = default_priorities()
        self.waitq = WaitQueue()
        # A running canary's other arm (canary_arm.py): its core counts this core's sends and finishes too, and
        # capacity freed here is offered to its waiters as well.
        self.twin: Admission | None = None

    def _sent(self, node: Node, rid: int, prefix: Keys = (), prompt: int = 0) -> None:
        now = time.time()
        self.sched.sent(node, rid, now, prefix, prompt)
        twin = self.twin.sched.nodes.get(node.name) if self.twin is not None else None
        if twin is not None:
            self.twin.sched.sent(twin, rid, now, prefix, prompt)

    def retry_after(self) -> dict[str, str]:
        return {"Retry-After": str(self.sched.config.retry_after_s)}

    async def acquire(self, model: str, cls: str, exclude: frozenset[str], rid: int, prefix: Keys = (),
                      stream: bool = False, answer: int = 0, prompt: int = 0) -> Node:
        """A node reserved for request `rid` (its send already counted), or a Reply saying why there is none.
        `prefix`: the prompt's block keys, for cache-aware routing (empty when the policy does not use them);
        `stream`: the answer is streamed (expected_ttft counts); `answer`: the answer length asked for (0: none);
        `prompt`: the prompt's estimated tokens (0: not known), which the node's prefill backlog counts."""
        pick = self.sched.pick(model, exclude, prefix, stream, answer)
        if pick.node is not None:
            self._sent(pick.node, rid, prefix, prompt)
            return pick.node
        if pick.verdict == "unknown_model":
            raise Reply(404, f"no node serves model {model!r}; GET /v1/models lists the models the fleet serves",
                        code="model_not_found", param="model")
        if pick.verdict == "unavailable":
            raise Reply(503, f"no node can serve {model!r} now (every node is draining, cordoned, stale, "
                             "failed or quarantined); retry later", type_="server_error", code="no_node",
                        headers=self.retry_after())
        pc = self.priorities.classes[cls]
        if pc.sheddable:
            self.counters["shed_429"] += 1
            raise Reply(429, f"the fleet is saturated and class {cls!r} is shed at saturation; retry after "
                             f"{self.sched.config.retry_after_s} s", type_="rate_limit_error", code="saturated",
                        headers=self.retry_after())
        waiter = self.waitq.add(cls, model, exclude, pc.queue_limit, rid, prefix, stream, answer, prompt)
        if waiter is None:
            raise Reply(503, f"the fleet is saturated and the {cls!r} queue is full ({pc.queue_limit} waiting); "
                             "retry later", type_="server_error", code="queue_full", headers=self.retry_after())
        return await self._wait(waiter, pc.queue_timeout_s)

    async def _wait(self, waiter: Waiter, timeout_s: float) -> Node:
        try:
            async with asyncio.timeout(timeout_s):
                return await asyncio.shield(waiter.future)
        except TimeoutError:
            pass
        finally:
            if not waiter.future.done():
                waiter.future.cancel()
            self.waitq.remove(waiter)
        if waiter.future.done() and not waiter.future.cancelled():  # granted in the same instant
            return waiter.future.result()
        raise Reply(503, f"the fleet stayed saturated for {timeout_s:g} s (the {waiter.cls!r} queue timeout); "
                         "retry later", type_="server_error", code="queue_timeout", headers=self.retry_after())

    def dispatch(self) -> None:
        """Offer capacity that may have freed to the waiters, most important class first."""
        if not len(self.waitq):
            return

        def grant(waiter: Waiter) -> Node | None:
            pick = self.sched.pick(waiter.model, waiter.exclude, waiter.prefix, waiter.stream, waiter.answer)
            if pick.node is None:
                return None
            self._sent(pick.node, waiter.rid, waiter.prefix, waiter.prompt)
            return pick.node

        self.waitq.dispatch([c.name for c in self.priorities.ordered()], grant)

    def finish(self, node: Node, rid: int, ttft_s: float | None, ok: bool, stream: bool = False) -> None:
        self.sched.finished(node, rid, ttft_s, ok=ok, stream=stream)
        twin = self.twin.sched.nodes.get(node.name) if self.twin is not None else None
        if twin is not None:
            self.twin.sched.finished(twin, rid, ttft_s, ok=ok, stream=stream)
        self.dispatch()
        if self.twin is not None:
            self.twin.dispatch()
