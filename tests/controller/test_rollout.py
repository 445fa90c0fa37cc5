"""Deployment rollouts on the local provider, end to end against a real simulated fleet: batch by batch with a drain
first, never more than max_unavailable out of service, every step audited and sent to webhooks; a failed batch
stops the rollout; revert re-applies the previous revision. Node samples are written the way ingest writes them
(the controller reads drains from them)."""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any

import httpx
import pytest
from django.utils import timezone

from agents.sim.background import BackgroundFleet
from control.controller import rollout
from control.controller.models import Rollout
from control.policy import service as policies
from control.webhooks.models import Delivery, Receiver
from core.audit.context import Origin
from core.audit.models import AuditEvent
from dashboard.fleet.models import GPU, Node
from tests.controller.conftest import bind_local, snapshot

POOL = "ctl"
pytestmark = pytest.mark.usefixtures("redis_db")


def entry(**over: Any) -> dict[str, Any]:
    return {"model": "sim-llm", "params_b": 8, "max_model_len": 4096,
            "strategy": {"max_unavailable": 1, "max_surge": 0, "drain_timeout_s": 60}, **over}


def deploy(**over: Any) -> int:
    current = policies.active("deployment")
    change = policies.create_revision("deployment", {"pools": {POOL: entry(**over)}}, "test deployment",
                                      current.pk, Origin.system("operator"))
    return change.revision.pk


def setup_pool(fleet: BackgroundFleet, n: int = 3, boot_delay_s: float = 0.0) -> list[str]:
    bind_local(POOL, fleet, boot_delay_s=boot_delay_s)
    names = []
    with httpx.Client(timeout=10) as c:
        for _ in range(n):
            names.append(c.post(f"{fleet.control_url}/nodes", json={}).json()["name"])
    for name in names:
        node = Node.objects.create(name=name, pool_id=Node._meta.get_field("pool").related_model.objects.get(
            name=POOL).pk)
        GPU.objects.create(node=node, index=0, name="NVIDIA H100 80GB HBM3")
        snapshot(name, POOL)
    return names


def fleet_nodes(fleet: BackgroundFleet) -> dict[str, dict[str, Any]]:
    with httpx.Client(timeout=10) as c:
        return {n["name"]: n for n in c.get(f"{fleet.control_url}/nodes").json()["nodes"]}


def drive(until: Callable[[], bool], fleet: BackgroundFleet, names: list[str], checks: list[str],
          timeout: float = 60.0) -> None:
    """Run the controller's reconcile until `until`; after each step the pool may have at most one node out of
    service (max_unavailable 1), in Switchyard's view and in the fleet's. Samples report the drained nodes idle."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        rollout.reconcile(timezone.now())
        out_of_service = Node.objects.filter(pool__name=POOL).exclude(state="active").count()
        not_up = [n for n, d in fleet_nodes(fleet).items() if d["state"] != "up"]
        assert out_of_service <= 1 and len(not_up) <= 1, (out_of_service, not_up)
        checks.append(f"{out_of_service}/{len(not_up)}")
        if until():
            return
        for name in names:  # fresh, idle samples: a drain sees no work left once a sample follows it
            snapshot(name, POOL)
        time.sleep(0.05)
    raise AssertionError(f"timed out; rollouts: {list(Rollout.objects.values('id', 'state', 'step', 'batch', 'error'))}")


@pytest.mark.django_db(transaction=True)
def test_a_rollout_restarts_one_batch_at_a_time_after_a_drain(fleet: BackgroundFleet) -> None:
    names = setup_pool(fleet)
    Receiver.objects.create(name="ops", url="https://hooks.example.com/x", secret="s" * 20, events=["scaling"])
    rev = deploy()
    rollout.reconcile(timezone.now())
    r = Rollout.objects.get()
    assert r.batches == [[names[0]], [names[1]], [names[2]]] and r.revision_id == rev
    # The first batch is drained and waits: no sample has been taken since the drain.
    assert r.step == "draining" and Node.objects.get(name=names[0]).state == "draining"
    rollout.reconcile(timezone.now())
    assert Rollout.objects.get().step == "draining" and fleet_nodes(fleet)[names[0]]["restarts"] == 0
    # Work still in flight on the node keeps it draining.
    snapshot(names[0], POOL, running=3)
    rollout.reconcile(timezone.now())
    assert Rollout.objects.get().step == "draining"
    checks: list[str] = []
    drive(lambda: Rollout.objects.get().state == "done", fleet, names, checks)
    for name, doc in fleet_nodes(fleet).items():
        assert doc["restarts"] == 1, name
        assert doc["serving"]["max_model_len"] == 4096 and doc["serving"]["revision"] == rev
    assert set(Node.objects.filter(pool__name=POOL).values_list("state", flat=True)) == {"active"}
    actions = list(AuditEvent.objects.filter(action__startswith="deployment.").order_by("id")
                   .values_list("action", flat=True))
    assert actions == ["deployment.rollout"] + ["deployment.batch.drain", "deployment.batch.restart",
                                                "deployment.batch.done"] * 3 + ["deployment.rollout.done"]
    drains = AuditEvent.objects.filter(action="node.drain", actor="controller").order_by("id")
    assert [e.target for e in drains] == [f"node:{n}" for n in names]
    summaries = [d.payload["summary"] for d in Delivery.objects.filter(event="scaling").order_by("id")]
    assert summaries[0] == f"{POOL}: rolling out deployment v2 in 3 batch(es)"
    assert f"{POOL}: rollout #{r.pk} batch 2/3 draining {names[1]}" in summaries
    assert summaries[-1] == f"{POOL}: deployment v2 rolled out"
    # The same entry again (another pool's change, a rerun): nothing more to roll out.
    rollout.reconcile(timezone.now())
    assert Rollout.objects.count() == 1


@pytest.mark.django_db(transaction=True)
def test_a_failed_batch_stops_the_rollout_and_revert_reapplies_the_previous_revision(
        fleet: BackgroundFleet) -> None:
    names = setup_pool(fleet, boot_delay_s=0.5)  # long enough to catch a batch while it restarts
    first = deploy()
    drive(lambda: Rollout.objects.get().state == "done", fleet, names, [])
    deploy(max_model_len=2048, quantization="fp8")
    Receiver.objects.create(name="ops", url="https://hooks.example.com/x", secret="s" * 20, events=["alert"])
    # The first node of the new rollout crashes while it restarts.
    with httpx.Client(timeout=10) as c:
        def crash_when_restarting() -> bool:
            r = Rollout.objects.order_by("-id").first()
            if r is not None and r.revision_id != first and r.step == "restarting":
                c.post(f"{fleet.control_url}/nodes/{names[0]}/fail", json={"mode": "refuse"})
                return True
            return False

        drive(crash_when_restarting, fleet, names, [])
        drive(lambda: Rollout.objects.order_by("-id").first().state == "failed", fleet, names, [])
    failed = Rollout.objects.order_by("-id").first()
    assert failed.batch == 0 and f"batch 1/3 failed: {names[0]}" in failed.error
    # Stopped where it was: the later batches were never touched.
    nodes = fleet_nodes(fleet)
    assert [nodes[n]["restarts"] for n in names[1:]] == [1, 1]
    assert nodes[names[1]]["serving"]["max_model_len"] == 4096
    assert AuditEvent.objects.filter(action="deployment.rollout.failed").count() == 1
    [alert] = [a for d in Delivery.objects.filter(event="alert") for a in d.payload["alerts"]]
    assert alert["labels"]["alertname"] == "switchyard_controller_rollout_failed"
    assert alert["labels"]["severity"] == "critical" and "failed" in alert["annotations"]["summary"]
    rollout.reconcile(timezone.now())  # a failed rollout is not retried by itself
    assert Rollout.objects.count() == 2
    # Revert: the node comes back, and the previous revision is re-applied (a policy rollback) and rolled out.
    with httpx.Client(timeout=10) as c:
        c.post(f"{fleet.control_url}/nodes/{names[0]}/recover", json={})
    back = rollout.revert(failed.pk, "fp8 node crashed", Origin.system("operator"))
    assert back.reverts_id == failed.pk and back.entry["max_model_len"] == 4096
    active = policies.active("deployment")
    assert active.restored_from_id == first and back.revision_id == active.pk
    assert AuditEvent.objects.filter(action="policy.rollback", target="policy:deployment").count() == 1
    drive(lambda: Rollout.objects.get(pk=back.pk).state == "done", fleet, names, [])
    assert {d["serving"]["max_model_len"] for d in fleet_nodes(fleet).values()} == {4096}


@pytest.mark.django_db
def test_revert_refuses_what_it_cannot_do(fleet: BackgroundFleet) -> None:
    with pytest.raises(rollout.RolloutError, match="no rollout 999"):
        rollout.revert(999, "why", Origin.system("operator"))
    names = setup_pool(fleet, 1)
    deploy()
    rollout.reconcile(timezone.now())
    running = Rollout.objects.get()
    with pytest.raises(rollout.RolloutError, match="still running"):
        rollout.revert(running.pk, "why", Origin.system("operator"))
    with pytest.raises(rollout.RolloutError, match="reason is required"):
        rollout.revert(running.pk, "  ", Origin.system("operator"))
    assert names


@pytest.mark.django_db
def test_the_rollout_api_lists_and_reverts_with_roles(fleet: BackgroundFleet, api: Callable[..., Any]) -> None:
    names = setup_pool(fleet, 1)
    deploy()
    rollout.reconcile(timezone.now())
    r = Rollout.objects.get()
    listed = api("viewer").get("/api/v1/rollouts/", {"pool": POOL})
    assert listed.status_code == 200
    [row] = listed.json()
    assert row["id"] == r.pk and row["batches"] == [names] and row["state"] == "running"
    assert row["step"] == "draining" and row["entry"]["max_model_len"] == 4096
    assert api("viewer").get(f"/api/v1/rollouts/{r.pk}/").json()["version"] == 2
    assert api("viewer").get("/api/v1/rollouts/9999/").status_code == 404
    assert api(None).get("/api/v1/rollouts/").status_code in (401, 403)
    before = (AuditEvent.objects.count(), Rollout.objects.count())
    url = f"/api/v1/rollouts/{r.pk}/revert/"
    assert api("viewer").post(url, {"reason": "x"}, format="json").status_code == 403
    assert api(None).post(url, {"reason": "x"}, format="json").status_code in (401, 403)
    missing = api("operator").post(url, {}, format="json")
    assert missing.status_code == 400 and "reason" in missing.json()["fields"]
    extra = api("operator").post(url, {"reason": "x", "force": True}, format="json")
    assert extra.status_code == 400 and extra.json()["fields"] == {"force": "unknown field"}
    busy = api("operator").post(url, {"reason": "x"}, format="json")
    assert busy.status_code == 409 and "still running" in busy.json()["error"]
    assert api("operator").post("/api/v1/rollouts/9999/revert/", {"reason": "x"}, format="json").status_code == 404
    assert (AuditEvent.objects.count(), Rollout.objects.count()) == before


@pytest.mark.django_db
def test_revert_of_a_first_rollout_is_refused_without_changing_the_policy(fleet: BackgroundFleet) -> None:
    setup_pool(fleet, 1)
    deploy()
    rollout.reconcile(timezone.now())
    r = Rollout.objects.get()
    Rollout.objects.filter(pk=r.pk).update(state="done")
    active = policies.active("deployment").pk
    with pytest.raises(rollout.RolloutError, match="has no entry for pool 'ctl': there is nothing to roll back to"):
        rollout.revert(r.pk, "back", Origin.system("operator"))
    assert policies.active("deployment").pk == active and Rollout.objects.count() == 1
