"""The scaling page: pools and the action log for viewers; scale and revert forms for operators only, with CSRF,
a reason, and the same checks and audit as the API."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import pytest

from agents.sim.background import BackgroundFleet
from control.controller import loop
from control.controller.models import ScalingAction
from tests.control.conftest import csrf_post, events_since, last_event_id
from tests.controller.conftest import bind_local
from tests.controller.test_actions import set_pool_policy

pytestmark = [pytest.mark.django_db, pytest.mark.usefixtures("redis_db")]
POOL = "ctl"


def test_viewers_see_pools_and_actions_but_no_forms(browser: Callable[..., Any], fleet: BackgroundFleet) -> None:
    bind_local(POOL, fleet)
    set_pool_policy(POOL, min_nodes=1, max_nodes=5)
    loop.tick()  # scales to min_nodes
    assert browser(None).get("/scaling/").status_code == 302
    page = browser("viewer").get("/scaling/").content.decode()
    assert 'data-pool="ctl"' in page and "local" in page
    assert "min_nodes" in page  # the action's rule, in the log
    assert "/scaling/ctl/scale/" not in page and "revert" not in page.split('id="actions"')[1]
    operator = browser("operator").get("/scaling/").content.decode()
    assert "/scaling/ctl/scale/" in operator and "/revert/" in operator


def test_operators_scale_and_revert_with_a_reason(browser: Callable[..., Any], fleet: BackgroundFleet) -> None:
    bind_local(POOL, fleet)
    set_pool_policy(POOL, min_nodes=0, max_nodes=3)
    client = browser("operator")
    mark = last_event_id()
    r = csrf_post(client, "/scaling/ctl/scale/", {"size": "2", "reason": "launch"})
    assert r.status_code == 302 and r["Location"] == "/scaling/"
    action = ScalingAction.objects.get()
    assert (action.to_size, action.actor, action.reason) == (2, "operator", "launch")
    assert [e.action for e in events_since(mark)] == ["scaling.scale_out"]
    loop.tick()
    assert len(fleet.nodes) == 2
    r = csrf_post(client, f"/scaling/actions/{action.pk}/revert/", {"reason": "not needed"})
    assert r.status_code == 302
    assert ScalingAction.objects.filter(reverts=action, to_size=0).exists()
    # Reverted once: no second revert on offer (it would scale the pool again).
    assert f"/scaling/actions/{action.pk}/revert/" not in client.get("/scaling/").content.decode()


@pytest.mark.parametrize(("data", "message"), [
    ({"size": "2", "reason": ""}, "reason is required"),
    ({"size": "lots", "reason": "x"}, "whole number"),
    ({"size": "9", "reason": "x"}, "outside the pool"),
])
def test_bad_forms_say_why_and_change_nothing(browser: Callable[..., Any], fleet: BackgroundFleet,
                                              data: dict[str, str], message: str) -> None:
    bind_local(POOL, fleet)
    set_pool_policy(POOL, min_nodes=0, max_nodes=3)
    client = browser("operator")
    r = csrf_post(client, "/scaling/ctl/scale/", data)
    assert r.status_code == 302
    assert message in client.get("/scaling/").content.decode()
    assert not ScalingAction.objects.exists()


def test_viewers_and_forged_posts_are_refused(browser: Callable[..., Any], fleet: BackgroundFleet) -> None:
    bind_local(POOL, fleet)
    assert csrf_post(browser("viewer"), "/scaling/ctl/scale/", {"size": "1", "reason": "x"}).status_code == 403
    # No CSRF token: refused even for an operator.
    assert browser("operator").post("/scaling/ctl/scale/", {"size": "1", "reason": "x"}).status_code == 403
    assert browser("operator").get("/scaling/ctl/scale/").status_code == 405
    assert not ScalingAction.objects.exists()
