"""The guard over synthetic minute rows with a controllable clock: what trips it (latency, errors, queue), what does
not (a healthy change, too little traffic, a superseded one), what is never watched, and one rollback only when two
checks race.

Times are relative to the real activation (the active pointer's `updated`, which is what the guard reads): baseline
rows sit in the minutes before the activation's minute, observed rows from it on, and `now` is passed explicitly.
"""

from __future__ import annotations

import json
import threading
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from django.db import connection

from control.controller import guard
from control.controller.models import GuardWatch
from control.policy import service
from control.policy.models import ActivePolicy, PolicyRevision
from control.routing import histogram
from control.routing.models import RequestMinute
from control.webhooks import sender
from control.webhooks.models import Delivery, Receiver
from core.audit.context import Origin
from core.audit.models import AuditEvent
from dashboard.metrics import partitions
from tests.conftest import at_once
from tests.webhooks.conftest import LocalReceiver, receiver  # noqa: F401  (a real local HTTP receiver)

OPERATOR = Origin.system("alice")
NOT_SCALING = ["scheduler", "priorities", "power"]  # so that setting the guard up is not itself watched


def set_guard(**bounds: Any) -> None:
    doc = service.active("scaling").document
    doc["guard"] = {**doc["guard"], "kinds": NOT_SCALING, "min_requests": 50, **bounds}
    service.create_revision("scaling", doc, "guard bounds for the test", service.active("scaling").pk,
                            Origin.system("setup"))


def change(kind: str = "scheduler", origin: Origin = OPERATOR, reason: str = "try new weights") -> PolicyRevision:
    """An operator's change of `kind` (the gpu_free weight for the scheduler; a visible edit elsewhere)."""
    current = service.active(kind)
    doc = json.loads(json.dumps(current.document))
    if kind == "scheduler":
        doc["scorers"][0]["weight"] = round(doc["scorers"][0]["weight"] + 0.1, 3)
    elif kind == "power":
        doc["default"] = {**doc["default"], "mode": "cap_pct", "pct": 80.0}
    elif kind == "priorities":
        doc["classes"][0]["queue_limit"] += 1
    return service.create_revision(kind, doc, reason, current.pk, origin).revision


def activated(kind: str = "scheduler") -> datetime:
    return ActivePolicy.objects.get(kind=kind).updated


def minute0(kind: str = "scheduler") -> datetime:
    return activated(kind).astimezone(UTC).replace(second=0, microsecond=0)


def rows(first: datetime, minutes: int, per_minute: int, latency_ms: float, *, errors: int = 0, shed: int = 0,
         node: str = "gpu-a-1") -> None:
    """`minutes` RequestMinute rows from `first`: per_minute requests each (errors of them 5xx, plus `shed` 429s
    that no node served)."""
    for i in range(minutes):
        m = first + timedelta(minutes=i)
        RequestMinute.objects.create(
            minute=m, node=node, pool="pool-a", request_class="standard", requests=per_minute,
            status_2xx=per_minute - errors, status_5xx=errors, latency_ms_sum=latency_ms * per_minute,
            latency_buckets=histogram.of([latency_ms] * per_minute))
        if shed:
            RequestMinute.objects.create(minute=m, node="", pool="", request_class="batch", requests=shed,
                                         status_429=shed, latency_buckets=histogram.of([2.0] * shed))


def queue(first: datetime, minutes: int, per_node: float, nodes: int = 2) -> None:
    """node_sample_1m rows: each of `nodes` nodes averaging per_node waiting requests for `minutes` minutes."""
    days = {(first + timedelta(minutes=i)).date() for i in range(minutes)}
    known = set(partitions._known_days)
    for day in days:
        partitions.ensure_partitions(day, 0)
    partitions._known_days.intersection_update(known)  # the test's transaction rolls the partitions back
    with connection.cursor() as cur:
        for i in range(minutes):
            for node in range(nodes):
                cur.execute("INSERT INTO node_sample_1m (bucket, node_id, n, requests_waiting_avg) "
                            "VALUES (%s, %s, 12, %s)", [first + timedelta(minutes=i), 9000 + node, per_node])


def baseline(m0: datetime, per_minute: int = 100, latency_ms: float = 100.0, errors: int = 0) -> None:
    rows(m0 - timedelta(minutes=60), 60, per_minute, latency_ms, errors=errors)


def watch_of(rev: PolicyRevision) -> GuardWatch:
    return GuardWatch.objects.get(revision=rev)


def clock(kind: str = "scheduler") -> Any:
    """at(s): s seconds after the kind's current activation (read now: a rollback moves the pointer later)."""
    t0 = activated(kind)
    return lambda seconds: t0 + timedelta(seconds=seconds)


# --- tripping ---------------------------------------------------------------------------------------------------
@pytest.mark.django_db
def test_a_latency_degradation_is_rolled_back_by_the_controller_audited_and_alerted(
        receiver: LocalReceiver) -> None:  # noqa: F811
    Receiver.objects.create(name="oncall", url=receiver.url, secret="s3cret-s3cret-s3cret",
                            events=["alert", "rollback"], internal=True)
    set_guard()
    good = service.active("scheduler")
    bad = change()
    m0 = minute0()
    at = clock()
    baseline(m0, latency_ms=100.0)
    rows(m0, 2, 60, 400.0)

    [w] = guard.open_watches(now=at(5))
    assert (w.revision, w.state, w.started, w.until) == (bad, "watching", activated(), activated() + timedelta(
        seconds=600))
    [v] = guard.check(now=at(90))  # well before the window's end: the degradation is already clear

    assert (v.watch, v.kind, v.state) == (w.pk, "scheduler", "rolled_back")
    assert "p95 latency" in v.reason and "above 1.5 x the" in v.reason and "120 requests" in v.reason
    now_active = service.active("scheduler")
    assert now_active.document == good.document and now_active.restored_from == good
    assert now_active.author == "controller" and now_active.parent == bad
    w.refresh_from_db()
    assert (w.state, w.rollback_revision, w.verdict) == ("rolled_back", now_active, v.reason)
    assert w.finished == at(90)
    assert 370 <= w.observed["p95_ms"] <= 440 and 92 <= w.baseline["p95_ms"] <= 110
    assert w.observed["requests"] == 120 and w.baseline["requests"] == 6000

    rollback = AuditEvent.objects.get(action="policy.rollback")
    assert (rollback.actor, rollback.target, rollback.reason) == ("controller", "policy:scheduler", v.reason)
    assert rollback.details["restored_from"] == good.pk and rollback.details["previous"] == bad.pk
    trip = AuditEvent.objects.get(action="guard.rollback")
    assert (trip.actor, trip.target, trip.request_id) == ("controller", "policy:scheduler", rollback.request_id)
    assert trip.before["p95_ms"] == w.baseline["p95_ms"] and trip.after["p95_ms"] == w.observed["p95_ms"]
    assert trip.details["rollback_revision"] == now_active.pk and trip.details["restored"] == good.pk

    by_event = {d.event: d for d in Delivery.objects.all()}
    assert set(by_event) == {"alert", "rollback"}
    assert by_event["rollback"].payload["actor"] == "controller"
    assert sender.deliver(by_event["alert"].pk) == "done"
    body = json.loads(receiver.requests[-1].body)
    [alert] = body["alerts"]
    assert alert["status"] == "firing" and alert["labels"]["alertname"] == "switchyard_controller_guard_rollback"
    assert alert["labels"]["kind"] == "scheduler" and "p95 latency" in alert["annotations"]["summary"]
    assert alert["generatorURL"].endswith("/policies/scheduler/history/")

    # The controller's own rollback is not watched, and the finished watch is not judged again.
    assert guard.open_watches(now=at(95)) == []
    assert guard.check(now=at(700)) == []
    assert PolicyRevision.objects.filter(kind="scheduler").count() == 3


@pytest.mark.django_db
def test_a_rise_in_5xx_is_rolled_back_while_429_sheds_count_for_nothing() -> None:
    set_guard(error_rate_increase_pct=5.0)
    bad = change()
    m0 = minute0()
    at = clock()
    baseline(m0, per_minute=100, errors=1)  # 1 % before
    rows(m0, 1, 100, 100.0, errors=5, shed=400)  # 5 %: 4 points up, and 400 sheds that are not errors
    guard.open_watches(now=at(5))
    [v] = guard.check(now=at(50))
    assert v.state == "watching" and "100 requests" in v.reason and "errors 5.00 %" in v.reason

    rows(m0 + timedelta(minutes=1), 1, 100, 100.0, errors=15)  # now 20 of 200: 10 %
    [v] = guard.check(now=at(110))
    assert v.state == "rolled_back"
    assert "error rate 10.00 % (20 of 200 requests) is more than 5 points above the 1.00 % before" in v.reason
    assert "p95" not in v.reason  # latency did not move
    assert service.active("scheduler").restored_from == bad.parent
    w = watch_of(bad)
    assert w.observed["shed_429"] == 400 and w.observed["error_pct"] == 10.0 and w.baseline["error_pct"] == 1.0


@pytest.mark.django_db
def test_a_growing_queue_is_rolled_back_without_any_request() -> None:
    set_guard(queue_ratio=2.0, queue_floor=10.0)
    bad = change("power")
    m0 = minute0("power")
    at = clock("power")
    queue(m0 - timedelta(minutes=60), 60, per_node=3.0)  # 6 waiting fleet-wide before
    queue(m0, 2, per_node=15.0)  # 30 after: above max(10, 2 x 6)
    guard.open_watches(now=at(5))
    [v] = guard.check(now=at(150))
    assert v.state == "watching", "two sampled minutes are not yet a verdict"
    queue(m0 + timedelta(minutes=2), 1, per_node=15.0)
    [v] = guard.check(now=at(200))
    assert v.state == "rolled_back" and v.kind == "power"
    assert "mean queue 30 is above 12 (the larger of the floor 10 and 2 x the 6 before)" in v.reason
    assert service.active("power").document["default"]["mode"] == "uncapped"
    w = watch_of(bad)
    assert (w.observed["requests"], w.observed["queue_minutes"], w.baseline["queue"]) == (0, 3, 6.0)


@pytest.mark.django_db
def test_a_queue_below_the_floor_never_trips_however_it_grows() -> None:
    set_guard(queue_ratio=2.0, queue_floor=10.0)
    bad = change()
    m0 = minute0()
    at = clock()
    baseline(m0)
    queue(m0 - timedelta(minutes=60), 60, per_node=0.5)
    queue(m0, 10, per_node=4.5)  # 9 fleet-wide: 9 x the baseline, below the floor
    rows(m0, 10, 100, 100.0)
    guard.open_watches(now=at(5))
    [v] = guard.check(now=at(600 + guard.SETTLE_S))
    assert v.state == "passed" and watch_of(bad).observed["queue"] == 9.0


# --- not tripping -----------------------------------------------------------------------------------------------
@pytest.mark.django_db
def test_a_healthy_change_is_passed_once_the_window_and_its_settling_time_are_over() -> None:
    set_guard(watch_window_s=300)
    bad = change()
    m0 = minute0()
    at = clock()
    baseline(m0, latency_ms=100.0)
    rows(m0, 6, 100, 130.0)  # 1.3 x: within the 1.5 bound
    guard.open_watches(now=at(5))
    [v] = guard.check(now=at(200))
    assert v.state == "watching"
    [v] = guard.check(now=at(300 + guard.SETTLE_S - 1))
    assert v.state == "watching", "rows of the window's last seconds may still be on their way"
    [v] = guard.check(now=at(300 + guard.SETTLE_S))
    assert v.state == "passed" and v.reason.startswith("no degradation: ")
    w = watch_of(bad)
    assert w.state == "passed" and w.finished == at(300 + guard.SETTLE_S)
    assert service.active("scheduler") == bad
    assert not AuditEvent.objects.filter(actor="controller").exists() and not Delivery.objects.exists()


@pytest.mark.django_db
def test_too_little_traffic_is_skipped_not_judged() -> None:
    set_guard(min_requests=50)
    bad = change()
    m0 = minute0()
    at = clock()
    baseline(m0)
    rows(m0, 2, 20, 5000.0)  # 40 slow requests: too few to blame the change
    guard.open_watches(now=at(5))
    [v] = guard.check(now=at(130))
    assert v.state == "watching"
    [v] = guard.check(now=at(600 + guard.SETTLE_S))
    assert (v.state, v.reason) == ("skipped", "not enough traffic: 40 requests (at least 50 needed)")
    assert service.active("scheduler") == bad


@pytest.mark.django_db
def test_a_quiet_baseline_is_no_comparison() -> None:
    set_guard(min_requests=50)
    bad = change()
    m0 = minute0()
    at = clock()
    rows(m0 - timedelta(minutes=30), 1, 10, 10.0)
    rows(m0, 5, 100, 5000.0)
    guard.open_watches(now=at(5))
    [v] = guard.check(now=at(600 + guard.SETTLE_S))
    assert v.state == "skipped"
    assert v.reason == "not enough traffic before the change: 10 requests (at least 50 needed)"
    assert service.active("scheduler") == bad


@pytest.mark.django_db
def test_a_superseded_change_is_skipped_and_the_new_one_watched() -> None:
    set_guard()
    first = change()
    m0 = minute0()
    at = clock()
    baseline(m0)
    rows(m0, 2, 100, 900.0)
    guard.open_watches(now=at(5))
    second = change(reason="better weights")
    [v] = guard.check(now=at(60))
    assert (v.state, v.reason) == ("skipped", f"superseded by revision {second.version} (id {second.pk}, by alice)")
    assert service.active("scheduler") == second
    [w] = guard.open_watches()
    assert w.revision == second and watch_of(first).state == "skipped"


@pytest.mark.django_db
def test_rollback_goes_to_the_revision_active_before_an_activation_not_the_parent() -> None:
    set_guard()
    start = service.active("scheduler")
    doc = json.loads(json.dumps(start.document))
    doc["scorers"][1]["weight"] = 0.0
    draft = service.create_revision("scheduler", doc, "draft", start.pk, OPERATOR, activate=False).revision
    middle = change()
    service.activate("scheduler", draft.pk, "use the draft", OPERATOR)
    m0 = minute0()
    at = clock()
    baseline(m0)
    rows(m0, 2, 100, 900.0)
    [w] = guard.open_watches(now=at(5))
    assert w.revision == draft and draft.parent == start
    [v] = guard.check(now=at(70))
    assert v.state == "rolled_back" and f"to v{middle.version}:" in v.reason
    assert service.active("scheduler").restored_from == middle


# --- what is watched --------------------------------------------------------------------------------------------
@pytest.mark.django_db
def test_a_disabled_guard_watches_nothing_and_drops_open_watches() -> None:
    set_guard(enabled=False)
    bad = change()
    m0 = minute0()
    at = clock()
    baseline(m0)
    rows(m0, 2, 100, 900.0)
    assert guard.open_watches(now=at(5)) == []
    assert guard.check(now=at(90)) == [] and not GuardWatch.objects.exists()
    assert service.active("scheduler") == bad

    set_guard(enabled=True)
    [w] = guard.open_watches(now=at(6))
    set_guard(enabled=False)
    [v] = guard.check(now=at(90))
    assert (v.state, v.reason) == ("skipped", "the guard was disabled")
    assert service.active("scheduler") == bad


@pytest.mark.django_db
def test_only_the_kinds_listed_are_watched() -> None:
    set_guard(kinds=["power"])
    change("scheduler")
    change("priorities")
    assert guard.open_watches() == []
    power = change("power")
    [w] = guard.open_watches()
    assert (w.revision, w.kind) == (power, "power")


@pytest.mark.django_db
def test_scaling_changes_are_watched_when_listed() -> None:
    set_guard(kinds=["scaling"])  # this very change is the scaling revision watched
    [w] = guard.open_watches()
    assert w.kind == "scaling" and w.revision == service.active("scaling")


@pytest.mark.django_db
def test_first_revisions_old_activations_and_repeats_are_not_watched() -> None:
    set_guard(watch_window_s=600)
    assert service.active("power").parent is None
    assert guard.open_watches() == []  # the shipped defaults: nothing to go back to
    rev = change()
    at = clock()
    assert guard.open_watches(now=at(600)) == []  # activated a whole window ago: too late to judge
    [w] = guard.open_watches(now=at(599))
    assert guard.open_watches(now=at(599)) == [] and GuardWatch.objects.get() == w
    assert w.revision == rev


# --- concurrency ------------------------------------------------------------------------------------------------
@pytest.mark.django_db(transaction=True)
def test_two_checks_at_once_roll_back_exactly_once(monkeypatch: pytest.MonkeyPatch) -> None:
    set_guard()
    bad = change()
    m0 = minute0()
    at = clock()
    baseline(m0)
    rows(m0, 2, 100, 900.0)
    guard.open_watches(now=at(5))
    now = at(90)

    # Whoever gets to the rollback first waits (up to 2 s) for the other to get there too. With the row lock the
    # other cannot: it waits on the lock, then finds the watch decided.
    meet = threading.Barrier(2)

    def wait_for_the_other() -> None:
        try:
            meet.wait(timeout=2)
        except threading.BrokenBarrierError:
            pass

    monkeypatch.setattr(guard, "before_rollback", wait_for_the_other)
    results = at_once(lambda: guard.check(now=now))
    states = sorted(v.state for r in results for v in r)
    assert states == ["rolled_back"], results
    assert PolicyRevision.objects.filter(kind="scheduler", author="controller").count() == 1
    assert AuditEvent.objects.filter(action="guard.rollback").count() == 1
    assert AuditEvent.objects.filter(action="policy.rollback").count() == 1
    assert watch_of(bad).state == "rolled_back"
