"""The canary page, the Routing banner while a canary runs, and the editor's what-if panel (server side)."""

from __future__ import annotations

from typing import Any

from django.test import Client

from tests.canary.helpers import CANARY_URL, candidate, start
from tests.control.conftest import PASSWORD


def login(role: str) -> Client:
    c = Client()
    assert c.login(username=role, password=PASSWORD)
    return c


def test_canary_page_by_role(api: Any) -> None:
    assert Client().get("/policies/scheduler/canary/").status_code == 302  # to the login page
    page = login("viewer").get("/policies/scheduler/canary/")
    assert page.status_code == 200 and b"No scheduler canary has run yet" in page.content
    op = api("operator")
    start(op, candidate(op))
    page = login("viewer").get("/policies/scheduler/canary/").content.decode()
    assert "running" in page and "5.0 % for 0 s" in page and 'id="canary-controls"' not in page
    page = login("operator").get("/policies/scheduler/canary/").content.decode()
    assert 'id="canary-controls"' in page and 'data-action="abort"' in page
    assert login("viewer").get("/policies/power/canary/").status_code == 404


def test_routing_page_shows_a_banner_only_while_a_canary_runs(api: Any) -> None:
    viewer = login("viewer")
    assert b"canary-banner" not in viewer.get("/routing/").content
    op = api("operator")
    start(op, candidate(op))
    page = viewer.get("/routing/").content.decode()
    assert "canary-banner" in page and "5.0 % of requests" in page
    op.post(f"{CANARY_URL}abort/", {"reason": "stop"}, format="json")
    assert b"canary-banner" not in viewer.get("/routing/").content


def test_the_scheduler_editor_offers_the_whatif_preview_to_operators(api: Any) -> None:
    assert b'id="whatif"' in login("operator").get("/policies/scheduler/").content
    assert b'id="whatif"' not in login("viewer").get("/policies/scheduler/").content
    assert b'id="whatif"' not in login("operator").get("/policies/scaling/").content


def test_canary_page_shows_the_analysis_control(api: Any) -> None:
    op = api("operator")
    assert start(op, candidate(op), latency_against="switchback", switchback_s=15,
                 early_settle_s=10).status_code == 201
    page = login("viewer").get("/policies/scheduler/canary/").content.decode()
    assert 'id="canary-control"' in page
    assert "switchback control" in page and "every 15 s" in page and "early window ending 10 s ago" in page
