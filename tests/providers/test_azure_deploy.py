"""A deployment on an Azure scale set (the real azure-mgmt-compute client) against the fake Resource Manager: the
model's user data carries the engine's boot script, each batch's instances are upgraded to it (`manualupgrade`),
and the controller's rollout drains each batch before its upgrade, batch by batch."""

from __future__ import annotations

import base64
from typing import Any

import pytest
from django.utils import timezone

from control.controller import bindings, rollout
from control.controller.models import Rollout
from control.policy import service as policies
from control.policy.schemas import validate
from control.providers.aws.deploy import user_data
from core.audit.context import Origin
from dashboard.fleet.models import Node, Pool
from tests.controller.conftest import snapshot
from tests.providers.conftest import wait_until
from tests.providers.fakes.azure import FakeArm
from tests.providers.test_azure import SUB, arm, cert, provider  # noqa: F401  (fixtures)

ENTRY = {"model": "meta-llama/Llama-3.1-8B-Instruct", "params_b": 8, "tensor_parallel_size": 8,
         "max_model_len": 8192, "gpus_per_node": 8, "gpu_memory_gb": 80,
         "strategy": {"max_surge": 0, "max_unavailable": 1, "drain_timeout_s": 30}}


def entry() -> dict[str, Any]:
    return validate("deployment", {"pools": {"z": ENTRY}})["pools"]["z"]


def test_the_first_batch_updates_the_model_and_each_batch_upgrades_its_instances(arm: FakeArm) -> None:  # noqa: F811
    p = provider()
    arm.ready_after_s = 1.0
    rid = p.restart_instances(["0"], entry(), 5)
    assert len(rid) == 36
    assert base64.b64decode(arm.user_data or "").decode() == user_data(entry(), 5)
    assert arm.model == 1 and arm.upgrades == [["0"]]
    states = {i.id: i.state for i in p.list_instances()}
    assert states == {"0": "Updating", "1": "Succeeded"}  # the other batch still runs the old model
    wait_until(lambda: {i.state for i in p.list_instances()} == {"Succeeded"}, what="the upgrade")
    patches = sum(1 for m, path in arm.requests if m == "PATCH")
    p.restart_instances(["1"], entry(), 5)
    assert arm.upgrades == [["0"], ["1"]]
    assert sum(1 for m, path in arm.requests if m == "PATCH") == patches  # the model was already the entry's


@pytest.mark.django_db
@pytest.mark.usefixtures("redis_db")
def test_the_controller_rolls_a_scale_set_out_batch_by_batch(arm: FakeArm) -> None:  # noqa: F811
    Pool.objects.create(name="z")
    bindings.set_provider("z", "azure", {"subscription_id": SUB, "resource_group": "gpu-rg", "vmss": "gpuvmss"},
                          True, "test", Origin.system("test"))
    names = sorted(i.node for i in provider().list_instances())
    for name in names:
        Node.objects.create(name=name, pool=Pool.objects.get(name="z"))
        snapshot(name, "z")  # reporting: a drain then waits for a sample taken after it
    arm.ready_after_s = 0.3
    current = policies.active("deployment")
    policies.create_revision("deployment", {"pools": {"z": ENTRY}}, "8B on azure", current.pk,
                             Origin.system("operator"))

    def tick() -> Rollout:
        rollout.reconcile(timezone.now(), provider_for=lambda binding: provider())
        return Rollout.objects.get()

    r = tick()
    assert r.batches == [[names[0]], [names[1]]] and r.step == "draining"
    assert arm.upgrades == []  # nothing is upgraded before its drain is over
    seen: list[list[list[str]]] = []

    def step() -> bool:
        for name in names:
            snapshot(name, "z")
        r = tick()
        seen.append([list(u) for u in arm.upgrades])
        # max_unavailable 1: at most one node of the pool out of service at any step.
        assert Node.objects.filter(pool__name="z").exclude(state="active").count() <= 1
        return r.state == "done"

    wait_until(step, timeout_s=30, what="the rollout")
    assert arm.upgrades == [["0"], ["1"]] and arm.model == 1
    assert [["0"]] in seen  # the first batch upgraded alone before the second started
