"""Issue 6: "Guard: a bad weight change on a simulated fleet under load is rolled back by itself and audited."

The story, on a real simulated fleet (agents/sim, three nodes, real HTTP) behind the real gateway:

1. Warm-up: load flows under the good scheduler revision (the shipped weights) while every node is healthy. The
   baseline is this real traffic, re-dated: its minute rows are moved five minutes back, so that they fall in the
   hour before the change (the guard compares whole minutes and counts the change's own minute as "after"; waiting
   for a minute boundary or an hour is not possible in a test). The latencies are the fleet's real ones.
2. One node turns slow (the simulated fleet's control API, as a degraded GPU would). Its agent-side figures still
   show the most free KV cache (the sample says 5 %, the others 50 %).
3. An operator activates a bad revision: KV-cache room weighted 10, the expected-wait scorer (which would have
   noticed the slowness) turned off. Every request now goes to the slow node.
4. The controller's two steps run as its tick would (routing aggregation, open_watches, check) until the guard
   acts; the test asserts the rollback to the good revision, its audit with actor "controller", the alert and
   rollback events, and that the gateway routes away from the slow node again.

Node samples are posted once at registration (no agents run), so both revisions accept samples for an hour
(`filters.max_stale_s`); nothing else differs from the defaults but the bad change itself.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from datetime import timedelta
from typing import Any

import httpx
import pytest
from django.db.models import F, Sum

from agents.sim.background import BackgroundFleet
from control.controller import guard
from control.controller.models import GuardWatch
from control.policy import service
from control.routing import aggregate
from control.routing.models import RequestMinute
from control.scheduler.auth import internal_token
from control.scheduler.status import read_status
from control.webhooks.models import Delivery, Receiver
from core.audit.context import Origin, new_request_id
from core.audit.models import AuditEvent
from tests.conftest import make_user
from tests.scheduler.conftest import Fleet, gateway  # noqa: F401  (the gateway fixture on a real port)

SIM_MODEL = "sim-llm"
BODY = {"model": SIM_MODEL, "messages": [{"role": "user", "content": "hi"}], "max_tokens": 16}
SLOW, SLOW_FACTOR = "sim-1", 8.0
CONCURRENCY = 6
MIN_REQUESTS = 30


@pytest.fixture
def fleet(clean_samples: None) -> Fleet:
    """Overrides tests/controller/conftest.py's `fleet` here: the gateway fixture registers nodes through this."""
    return Fleet()


@pytest.fixture
def sim() -> Iterator[BackgroundFleet]:
    with BackgroundFleet(pool="pool-a", model=SIM_MODEL, gpus=1, time_scale=3.0, seed=11, control_port=0) as f:
        yield f


@dataclass
class Done:
    sent: float  # unix seconds
    node: str
    status: int


class Load:
    """CONCURRENCY clients sending one uniform request after another until stopped."""

    def __init__(self, url: str, token: str) -> None:
        self.url, self.token = url, token
        self.done: list[Done] = []
        self.failures: list[str] = []
        self._stop = threading.Event()
        self._threads: list[threading.Thread] = []

    def _client(self) -> None:
        with httpx.Client(timeout=60, headers={"Authorization": f"Bearer {self.token}"}) as client:
            while not self._stop.is_set():
                sent = time.time()
                try:
                    r = client.post(f"{self.url}/v1/chat/completions", json=BODY)
                except httpx.HTTPError as exc:
                    self.failures.append(repr(exc))
                    continue
                self.done.append(Done(sent, r.headers.get("X-Switchyard-Node", ""), r.status_code))

    def start(self) -> Load:
        self._stop.clear()
        self._threads = [threading.Thread(target=self._client, daemon=True) for _ in range(CONCURRENCY)]
        for t in self._threads:
            t.start()
        return self

    def stop(self) -> None:
        self._stop.set()
        for t in self._threads:
            t.join(90)

    def sent_between(self, start: float, end: float = float("inf")) -> list[Done]:
        return [d for d in list(self.done) if start <= d.sent < end]


def wait_until(condition: Callable[[], Any], timeout: float, what: str) -> Any:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = condition()
        if value:
            return value
        time.sleep(0.2)
    raise AssertionError(f"timed out after {timeout:g} s waiting for {what}")


def slow_share(done: list[Done]) -> float:
    return sum(d.node == SLOW for d in done) / max(1, len(done))


def scheduler_id(gw_url: str) -> int | None:
    return read_status(gw_url, internal_token(), timeout=5).policy.get("scheduler")


def test_a_bad_weight_change_under_load_is_rolled_back_by_the_guard_and_audited(
        fleet: Fleet, sim: BackgroundFleet, gateway: Any) -> None:  # noqa: F811
    setup = Origin.system("setup")
    scaling = service.active("scaling").document
    scaling["guard"].update(kinds=["scheduler"], min_requests=MIN_REQUESTS, watch_window_s=600, baseline_s=3600)
    service.create_revision("scaling", scaling, "guard the scheduler", service.active("scaling").pk, setup)
    good_doc = service.active("scheduler").document
    good_doc["filters"]["max_stale_s"] = 3600
    good = service.create_revision("scheduler", good_doc, "samples are posted once in this test",
                                   service.active("scheduler").pk, setup).revision
    Receiver.objects.create(name="oncall", url="http://127.0.0.1:9/hook", secret="s3cret-s3cret-s3cret",
                            events=["alert", "rollback"], internal=True)

    nodes = [sim.add_node(name=f"sim-{i}") for i in range(3)]
    for node in nodes:
        fleet.add(node.name, node.url, models=(SIM_MODEL,), kv=5.0 if node.name == SLOW else 50.0)
    gw = gateway()
    gw.wait(lambda: gw.eligible() == {n.name for n in nodes}, what="3 sim nodes eligible")
    wait_until(lambda: scheduler_id(gw.url) == good.pk, 10, "the gateway to load the good revision")
    load = Load(gw.url, make_user("load", "viewer"))
    try:
        # 1. The baseline: real traffic on the healthy fleet, folded into minute rows, then moved into the past.
        load.start()
        wait_until(lambda: len(load.done) >= 2 * MIN_REQUESTS, 60, "warm-up requests")
        load.stop()
        warm = len(load.done)
        assert {d.status for d in load.done} == {200} and load.failures == []

        def folded() -> bool:
            aggregate.run()
            return RequestMinute.objects.aggregate(n=Sum("requests"))["n"] == warm

        wait_until(folded, 15, "the warm-up requests in the minute rows")
        RequestMinute.objects.update(minute=F("minute") - timedelta(minutes=5))

        # 2. One node turns slow; 3. an operator activates the bad weights.
        httpx.post(f"{sim.control_url}/nodes/{SLOW}/slow", json={"factor": SLOW_FACTOR}, timeout=5) \
            .raise_for_status()
        bad_doc = service.active("scheduler").document
        for scorer in bad_doc["scorers"]:
            if scorer["metric"] == "kv_cache":
                scorer["weight"] = 10.0
            if scorer["metric"] == "expected_wait":
                scorer["weight"] = 0.0
        alice = Origin(actor="alice", request_id=new_request_id(), client="127.0.0.1")
        bad = service.create_revision("scheduler", bad_doc, "route to the emptiest KV cache", good.pk,
                                      alice).revision
        wait_until(lambda: scheduler_id(gw.url) == bad.pk, 10, "the gateway to load the bad revision")
        bad_from = time.time()
        load.start()

        # 4. The controller's tick, as often as the test can afford, until the guard acts.
        def tripped() -> list[guard.Verdict]:
            aggregate.run()
            guard.open_watches()
            return [v for v in guard.check() if v.state != "watching"]

        [verdict] = wait_until(tripped, 60, "the guard's verdict")
        assert verdict.state == "rolled_back", verdict
        assert "p95 latency" in verdict.reason, verdict.reason
        back = service.active("scheduler")
        bad_phase = load.sent_between(bad_from, back.created.timestamp())
        assert back.author == "controller" and back.restored_from == good and back.document == good.document
        wait_until(lambda: scheduler_id(gw.url) == back.pk, 10, "the gateway to load the rolled-back revision")
        after_from = time.time() + 1.0  # requests sent once the good weights are in force
        wait_until(lambda: len(load.sent_between(after_from)) >= 60, 60, "requests after the rollback")
    finally:
        load.stop()
    after = load.sent_between(after_from)

    # The bad weights sent (nearly) everything to the slow node; the restored ones route around it again.
    report = (f"bad phase: {len(bad_phase)} requests, {slow_share(bad_phase):.0%} to {SLOW}; after the rollback: "
              f"{len(after)}, {slow_share(after):.0%}")
    assert slow_share(bad_phase) >= 0.9, report
    assert slow_share(after) <= 0.4, report
    assert {d.status for d in load.done} == {200} and load.failures == [], report

    watch = GuardWatch.objects.get(revision=bad)
    assert watch.state == "rolled_back" and watch.rollback_revision == back
    assert watch.observed["p95_ms"] > 1.5 * watch.baseline["p95_ms"], (watch.baseline, watch.observed)
    assert watch.baseline["requests"] == warm and watch.observed["requests"] >= MIN_REQUESTS

    change = AuditEvent.objects.get(action="policy.create", details__revision=bad.pk)
    assert change.actor == "alice"
    rollback = AuditEvent.objects.get(action="policy.rollback")
    assert (rollback.actor, rollback.target, rollback.details["restored_from"]) == (
        "controller", "policy:scheduler", good.pk)
    trip = AuditEvent.objects.get(action="guard.rollback")
    assert trip.actor == "controller" and trip.reason == verdict.reason
    assert trip.before["p95_ms"] == watch.baseline["p95_ms"] and trip.after["p95_ms"] == watch.observed["p95_ms"]
    assert sorted(Delivery.objects.values_list("event", flat=True)) == ["alert", "rollback"]
    print(f"\n{report}; baseline {guard.summary(watch.baseline)}; observed {guard.summary(watch.observed)}")
