"""The node-actions page: buttons for operators only, each action needs CSRF and a reason, and is audited."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from dashboard.fleet.models import Node
from tests.conftest import make_node
from tests.control.conftest import csrf_post, events_since, last_event_id


def test_page_needs_login_and_shows_buttons_to_operators_only(browser: Callable[..., Any]) -> None:
    make_node("gpu-a-1", "pool-a")
    assert browser(None).get("/node-actions/").status_code == 302
    viewer = browser("viewer").get("/node-actions/").content.decode()
    assert "gpu-a-1" in viewer and "/node-actions/gpu-a-1/drain/" not in viewer
    operator = browser("operator").get("/node-actions/").content.decode()
    for action in ("drain", "cordon", "uncordon"):
        assert f"/node-actions/gpu-a-1/{action}/" in operator


def test_buttons_change_state_with_a_reason_and_audit(browser: Callable[..., Any]) -> None:
    make_node("gpu-a-1", "pool-a")
    client = browser("operator")
    mark = last_event_id()
    response = csrf_post(client, "/node-actions/gpu-a-1/drain/", {"reason": "bad fan"})
    assert response.status_code == 302 and Node.objects.get(name="gpu-a-1").state == "draining"
    [event] = events_since(mark)
    assert (event.action, event.actor, event.reason, event.target) == ("node.drain", "operator", "bad fan",
                                                                        "node:gpu-a-1")
    csrf_post(client, "/node-actions/gpu-a-1/uncordon/", {"reason": ""})
    assert Node.objects.get(name="gpu-a-1").state == "draining"  # no reason, no change
    assert csrf_post(browser("viewer"), "/node-actions/gpu-a-1/uncordon/", {"reason": "x"}).status_code == 403
    assert csrf_post(client, "/node-actions/nope/drain/", {"reason": "x"}).status_code == 404
    assert csrf_post(client, "/node-actions/gpu-a-1/reboot/", {"reason": "x"}).status_code == 404
    assert client.get("/node-actions/gpu-a-1/drain/").status_code == 405


def test_node_page_has_the_buttons_for_operators_and_comes_back_to_itself(browser: Callable[..., Any]) -> None:
    make_node("gpu-a-1", "pool-a")
    assert "/node-actions/gpu-a-1/drain/" not in browser("viewer").get("/nodes/gpu-a-1/").content.decode()
    client = browser("operator")
    assert "/node-actions/gpu-a-1/cordon/" in client.get("/nodes/gpu-a-1/").content.decode()
    response = csrf_post(client, "/node-actions/gpu-a-1/cordon/", {"reason": "flaky NIC", "next": "/nodes/gpu-a-1/"})
    assert response.status_code == 302 and response["Location"] == "/nodes/gpu-a-1/"
    assert Node.objects.get(name="gpu-a-1").state == "cordoned"
    # An open redirect is refused: a foreign `next` falls back to the node-actions page.
    response = csrf_post(client, "/node-actions/gpu-a-1/uncordon/", {"reason": "ok", "next": "https://evil.example/"})
    assert response["Location"] == "/node-actions/"
