"""manage.py setprovider and controller --once: what an operator types, checked and audited."""

from __future__ import annotations

import json
from io import StringIO

import pytest
from django.core.management import call_command
from django.core.management.base import CommandError

from agents.sim.background import BackgroundFleet
from control.controller.models import PoolProvider, ScalingAction
from core.audit.models import AuditEvent
from tests.controller.test_actions import set_pool_policy

pytestmark = [pytest.mark.django_db, pytest.mark.usefixtures("redis_db")]


def run(*args: str) -> str:
    out = StringIO()
    call_command(*args, stdout=out, stderr=StringIO())
    return out.getvalue()


def test_setprovider_binds_types_values_by_field_and_audits() -> None:
    out = run("setprovider", "gpu-k8s", "kubernetes", "--set", "namespace=2024", "--set", "deployment=r1",
              "--set", "timeout_s=15")
    assert "gpu-k8s: kubernetes" in out
    b = PoolProvider.objects.get(pool__name="gpu-k8s")
    assert b.config["namespace"] == "2024" and b.config["timeout_s"] == 15.0  # a string stays a string
    event = AuditEvent.objects.get(action="provider.set")
    assert event.actor.startswith("manage.py setprovider") and event.after["kind"] == "kubernetes"
    # The same settings again change nothing and audit nothing (a demo rerun, an idempotent PUT).
    run("setprovider", "gpu-k8s", "kubernetes", "--set", "namespace=2024", "--set", "deployment=r1",
        "--set", "timeout_s=15")
    assert AuditEvent.objects.filter(action="provider.set").count() == 1
    assert "provider removed" in run("setprovider", "gpu-k8s", "--remove")
    assert not PoolProvider.objects.exists()


@pytest.mark.parametrize(("args", "message"), [
    (("setprovider", "p1", "aws"), "asg: required"),
    (("setprovider", "p1", "aws", "--set", "asg=a", "--set", "aws_secret_access_key=x"), "looks like a secret"),
    (("setprovider", "p1", "aws", "--set", "asg"), "write KEY=VALUE"),
    (("setprovider", "p1"), "give a provider kind"),
])
def test_setprovider_refuses_bad_settings_with_the_reason(args: tuple[str, ...], message: str) -> None:
    with pytest.raises(CommandError, match=message):
        run(*args)
    assert not PoolProvider.objects.exists()


def test_controller_once_runs_a_tick_and_prints_it(fleet: BackgroundFleet) -> None:
    run("setprovider", "ctl", "local", "--set", f"url={fleet.control_url}", "--set", "boot_delay_s=0")
    set_pool_policy("ctl", min_nodes=1, max_nodes=2)
    doc = json.loads(run("controller", "--once"))
    assert doc["tick"]["scaling"]["pools"] == 1 and doc["tick"]["scaling"]["errors"] == {}
    assert ScalingAction.objects.get().rule == "min_nodes" and len(fleet.nodes) == 1
