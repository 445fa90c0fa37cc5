"""Scaling actions against a real simulated fleet through the local provider: one action per decision, crash
recovery without a second provider call, retries with backoff, and drains that never cut in-flight work."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Any

import pytest

from agents.sim.background import BackgroundFleet
from control.controller import actions, loop
from control.controller.models import ScalingAction
from control.policy import service as policies
from control.providers.base import Instance, Provider, ProviderError, Size
from control.providers.registry import get as get_provider
from control.webhooks.models import Delivery, Receiver
from core.audit.context import Origin
from core.audit.models import AuditEvent
from dashboard.fleet.models import Node, Pool
from tests.conftest import at_once, make_node
from tests.controller.conftest import bind_local, snapshot

pytestmark = pytest.mark.usefixtures("redis_db")
POOL = "ctl"


def set_pool_policy(pool: str, **overrides: Any) -> None:
    active = policies.active("scaling")
    doc = dict(active.document)
    entry = {**doc["default"], **overrides}
    doc["pools"] = {**doc.get("pools", {}), pool: entry}
    policies.create_revision("scaling", doc, "test policy", active.pk, Origin.system("test"))


class Spy(Provider):
    """Counts the calls that change the fleet, around a real provider; can die right after one (a crash)."""

    kind = "spy"

    def __init__(self, inner: Provider, crash_after_set: bool = False, fail: ProviderError | None = None) -> None:
        self.inner, self.crash_after_set, self.fail = inner, crash_after_set, fail
        self.max_size = inner.max_size
        self.sets: list[int] = []
        self.removes: list[str] = []

    def current_size(self) -> Size:
        return self.inner.current_size()

    def set_desired_size(self, n: int) -> str:
        if self.fail is not None:
            raise self.fail
        self.sets.append(n)
        rid = self.inner.set_desired_size(n)
        if self.crash_after_set:
            raise SystemExit("worker killed")  # not a ProviderError: nothing after the call runs
        return rid

    def list_instances(self) -> list[Instance]:
        return self.inner.list_instances()

    def remove_instance(self, instance_id: str) -> str:
        self.removes.append(instance_id)
        return self.inner.remove_instance(instance_id)


def local(fleet: BackgroundFleet) -> Provider:
    return get_provider("local", {"url": fleet.control_url, "boot_delay_s": 0})


def out_proposal(frm: int, to: int) -> actions.Proposal:
    return actions.Proposal("scale_out", frm, to, "queue_length>50", "queue 80 > 50", {"queue_length": 80.0})


@pytest.mark.django_db
def test_a_decision_becomes_one_audited_action_that_scales_the_fleet(fleet: BackgroundFleet) -> None:
    bind_local(POOL, fleet)
    Receiver.objects.create(name="ops", url="https://hooks.example.com/x", secret="s" * 20, events=["scaling"])
    pool = Pool.objects.get(name=POOL)
    action = actions.propose(pool, out_proposal(0, 2), Origin.system("controller"))
    assert action is not None and action.state == "pending"
    # A second proposal for the same pool while the first is open: refused, not a second action.
    assert actions.propose(pool, out_proposal(0, 3), Origin.system("controller")) is None
    spy = Spy(local(fleet))
    actions.advance(action, spy)
    action.refresh_from_db()
    assert action.state == "done" and spy.sets == [2]
    assert action.provider_request_id.startswith("local-") and action.finished is not None
    assert len(fleet.nodes) == 2
    event = AuditEvent.objects.get(action="scaling.scale_out")
    assert event.actor == "controller" and event.target == f"pool:{POOL}"
    assert event.before == {"size": 0} and event.after == {"size": 2}
    assert event.details["metrics"] == {"queue_length": 80.0} and event.details["action"] == action.pk
    summaries = [d.payload["summary"] for d in Delivery.objects.filter(event="scaling")]
    assert any("0 → 2" in s for s in summaries) and any("done" in s for s in summaries)


@pytest.mark.django_db
def test_a_crash_after_the_provider_call_is_finished_without_a_second_call(fleet: BackgroundFleet) -> None:
    bind_local(POOL, fleet)
    action = actions.propose(Pool.objects.get(name=POOL), out_proposal(0, 2), Origin.system("controller"))
    assert action is not None
    dying = Spy(local(fleet), crash_after_set=True)
    with pytest.raises(SystemExit):
        actions.advance(action, dying)
    action.refresh_from_db()
    assert action.state == "running" and dying.sets == [2]  # the call went through; "done" was never written
    # The next controller run (a fresh process: a fresh provider object) reconciles from the provider's size.
    again = Spy(local(fleet))
    actions.advance(ScalingAction.objects.get(pk=action.pk), again)
    action.refresh_from_db()
    assert action.state == "done" and again.sets == []
    assert "reconciled" in action.provider_request_id
    assert len(fleet.nodes) == 2


@pytest.mark.django_db(transaction=True)
def test_two_controllers_at_once_make_exactly_one_action(fleet: BackgroundFleet, _close_worker_connections: None
                                                         ) -> None:
    """Two ticks at the same moment on the same decision (min_nodes 2 on an empty pool): one action, one call."""
    from control.controller import tasks

    bind_local(POOL, fleet)
    set_pool_policy(POOL, min_nodes=2, max_nodes=4)
    assert len(at_once(tasks.tick)) == 2
    assert ScalingAction.objects.count() == 1
    action = ScalingAction.objects.get()
    assert (action.from_size, action.to_size, action.rule, action.state) == (0, 2, "min_nodes", "done")
    assert len(fleet.nodes) == 2
    # And without the lock (two loops racing past it): the one-open-action constraint still allows one.
    ScalingAction.objects.all().delete()
    set_pool_policy(POOL, min_nodes=3, max_nodes=4)
    at_once(loop.tick)
    assert ScalingAction.objects.filter(to_size=3).count() == 1
    assert len(fleet.nodes) == 3


@pytest.mark.django_db
def test_a_provider_error_is_retried_with_backoff_then_fails_with_an_alert(fleet: BackgroundFleet) -> None:
    bind_local(POOL, fleet)
    Receiver.objects.create(name="ops", url="https://hooks.example.com/x", secret="s" * 20, events=["alert"])
    action = actions.propose(Pool.objects.get(name=POOL), out_proposal(0, 2), Origin.system("controller"))
    assert action is not None
    now = datetime.now(UTC)
    flaky = Spy(local(fleet), fail=ProviderError("the fleet's control API answered 503; try again"))
    actions.advance(action, flaky, now)
    action.refresh_from_db()
    assert action.state == "running" and action.attempts == 1
    assert "503" in action.error and action.next_attempt_at == now + timedelta(seconds=actions.BACKOFF_BASE_S)
    alerts = Delivery.objects.filter(event="alert")
    assert alerts.count() == 1
    assert "retrying" in alerts.get().payload["alerts"][0]["annotations"]["summary"]
    # Before the retry time nothing is tried; after it, the next attempt (backoff doubles).
    actions.advance(action, flaky, now + timedelta(seconds=10))
    action.refresh_from_db()
    assert action.attempts == 1
    later = now + timedelta(seconds=actions.BACKOFF_BASE_S + 1)
    actions.advance(action, flaky, later)
    action.refresh_from_db()
    assert action.attempts == 2 and action.next_attempt_at == later + timedelta(seconds=2 * actions.BACKOFF_BASE_S)
    # A permanent error fails it at once, audited, with a critical alert; the pool is free for the next decision.
    permanent = Spy(local(fleet), fail=ProviderError("Auto Scaling group 'x' not found", permanent=True))
    actions.advance(action, permanent, later + timedelta(hours=1))
    action.refresh_from_db()
    assert action.state == "failed" and "not found" in action.error
    failed = AuditEvent.objects.get(action="scaling.failed")
    assert failed.actor == "controller" and "not found" in failed.reason
    last = Delivery.objects.filter(event="alert").order_by("-pk").first()
    assert last is not None and last.payload["alerts"][0]["labels"]["severity"] == "critical"
    assert actions.open_action(Pool.objects.get(name=POOL)) is None
    assert len(fleet.nodes) == 0


@pytest.mark.django_db
def test_scale_in_drains_and_never_removes_a_node_with_work_before_the_deadline(fleet: BackgroundFleet) -> None:
    bind_local(POOL, fleet)
    set_pool_policy(POOL, min_nodes=0, max_nodes=4, scale_down={"stabilization_window_s": 60, "step": 1,
                                                                 "gpu_util_below_pct": 30.0, "drain_timeout_s": 120})
    for name in ("ctl-busy", "ctl-idle"):
        fleet.add_node(name=name)
        make_node(name, POOL)
    t0 = datetime.now(UTC)
    snapshot("ctl-busy", POOL, running=1, ts=t0)  # the idle one would be chosen first: make it the busy one below
    snapshot("ctl-idle", POOL, running=5, waiting=2, ts=t0)
    pool = Pool.objects.get(name=POOL)
    action = actions.propose(pool, actions.Proposal("scale_in", 2, 1, "scale_down", "idle", {}),
                             Origin.system("controller"), now=t0)
    assert action is not None
    spy = Spy(local(fleet))
    actions.advance(action, spy, t0)
    action.refresh_from_db()
    assert action.state == "draining" and action.nodes == ["ctl-busy"]  # the least busy was chosen
    assert Node.objects.get(name="ctl-busy").state == "draining"
    assert AuditEvent.objects.filter(action="node.drain", target="node:ctl-busy", actor="controller").exists()
    # Still work on it after the drain began: it stays, however often the controller looks.
    for s in (5, 30, 90):
        snapshot("ctl-busy", POOL, running=1, ts=t0 + timedelta(seconds=s))
        actions.advance(action, spy, t0 + timedelta(seconds=s))
        action.refresh_from_db()
        assert action.state == "draining" and spy.removes == []
    assert {n.name for n in fleet.nodes} == {"ctl-busy", "ctl-idle"}
    # Its work finished: removed, marked removed, audited.
    snapshot("ctl-busy", POOL, running=0, waiting=0, ts=t0 + timedelta(seconds=100))
    actions.advance(action, spy, t0 + timedelta(seconds=100))
    action.refresh_from_db()
    assert action.state == "done" and spy.removes == ["ctl-busy"] and action.error == ""
    assert [n.name for n in fleet.nodes] == ["ctl-idle"]
    assert Node.objects.get(name="ctl-busy").state == "removed"
    assert AuditEvent.objects.filter(action="node.remove", target="node:ctl-busy").exists()
    # Rerunning the finished step removes nothing more.
    action.state = "running"
    actions.advance(action, spy, t0 + timedelta(seconds=101))
    assert spy.removes == ["ctl-busy"]


@pytest.mark.django_db
def test_a_drain_deadline_ends_the_wait_and_says_so(fleet: BackgroundFleet) -> None:
    bind_local(POOL, fleet)
    set_pool_policy(POOL, min_nodes=0, max_nodes=4, scale_down={"stabilization_window_s": 60, "step": 1,
                                                                 "gpu_util_below_pct": 30.0, "drain_timeout_s": 60})
    fleet.add_node(name="ctl-stuck")
    make_node("ctl-stuck", POOL)
    t0 = datetime.now(UTC)
    snapshot("ctl-stuck", POOL, running=3, ts=t0)
    pool = Pool.objects.get(name=POOL)
    action = actions.propose(pool, actions.Proposal("scale_in", 1, 0, "manual", "test", {}),
                             Origin.system("controller"), now=t0)
    assert action is not None
    actions.advance(action, local(fleet), t0)
    snapshot("ctl-stuck", POOL, running=3, ts=t0 + timedelta(seconds=59))
    actions.advance(action, local(fleet), t0 + timedelta(seconds=59))
    action.refresh_from_db()
    assert action.state == "draining"
    snapshot("ctl-stuck", POOL, running=3, ts=t0 + timedelta(seconds=61))
    actions.advance(action, local(fleet), t0 + timedelta(seconds=61))
    action.refresh_from_db()
    assert action.state == "done" and "deadline passed" in action.error and "3 in flight" in action.error
    assert fleet.nodes == []


@pytest.mark.django_db
def test_a_removed_node_rejoins_when_its_agent_reports_again(fleet: BackgroundFleet) -> None:
    make_node("ctl-back", POOL)
    Node.objects.filter(name="ctl-back").update(state="removed")
    now = datetime.now(UTC)
    assert loop.rejoin_removed(now) == []  # no fresh sample: stays removed
    snapshot("ctl-back", POOL, ts=now)
    assert loop.rejoin_removed(now) == ["ctl-back"]
    assert Node.objects.get(name="ctl-back").state == "active"
    assert AuditEvent.objects.get(action="node.join").actor == "controller"


@pytest.mark.django_db
def test_scale_in_refuses_to_remove_blind_while_unnamed_nodes_serve(fleet: BackgroundFleet) -> None:
    """The provider's instances are not nodes Switchyard knows by name, and the pool's nodes are serving: the
    provider would pick one without a drain, so the action fails with what to fix instead."""
    bind_local(POOL, fleet)
    fleet.add_node(name="ctl-vm-1")
    fleet.add_node(name="ctl-vm-2")
    make_node("gpu-serving", POOL)  # reports under a name the provider does not list
    now = datetime.now(UTC)
    snapshot("gpu-serving", POOL, running=4, ts=now)
    action = actions.propose(Pool.objects.get(name=POOL), actions.Proposal("scale_in", 2, 1, "manual", "t", {}),
                             Origin.system("controller"), now=now)
    assert action is not None
    spy = Spy(local(fleet))
    actions.advance(action, spy, now)
    action.refresh_from_db()
    assert action.state == "failed" and "none can be drained" in action.error and "switchyard:node" in action.error
    assert spy.sets == [] and spy.removes == [] and len(fleet.nodes) == 2
    # With nothing reporting there is no work to protect: the provider chooses.
    from dashboard.metrics.latest import forget

    forget("gpu-serving")
    again = actions.propose(Pool.objects.get(name=POOL), actions.Proposal("scale_in", 2, 1, "manual", "t", {}),
                            Origin.system("controller"), now=now)
    assert again is not None
    actions.advance(again, spy, now)
    again.refresh_from_db()
    assert again.state == "done" and spy.sets == [1] and len(fleet.nodes) == 1
