"""Issue 4's "done when", in a real browser: change a scheduler weight, see the diff, give a reason, save, roll it
back in one click, and find both on the audit page with who and why."""

from __future__ import annotations

import json
from typing import Any

from control.policy import service
from tests.browser.conftest import Server, login, screenshot


def test_operator_changes_a_weight_sees_the_diff_rolls_back_and_the_audit_shows_both(page: Any, server: Server) -> None:
    login(page, server, "olga", "operator")
    page.goto(f"{server.url}/policies/scheduler/")
    document = json.loads(page.input_value("#document"))
    [gpu_free] = [s for s in document["scorers"] if s["metric"] == "gpu_free"]
    assert gpu_free["weight"] == 0.6
    gpu_free["weight"] = 0.45
    page.fill("#document", json.dumps(document, indent=2))
    page.fill("#reason", "favour CPU headroom during the 14:00 peak")
    page.click("button[value=preview]")
    diff = page.inner_text("main")
    assert "scorers[0].weight" in diff and "0.45" in diff
    screenshot(page, "policy-preview")

    page.on("dialog", lambda dialog: dialog.accept())  # the rollback confirmation
    page.click("button[value=save]")
    page.wait_for_url(f"{server.url}/policies/scheduler/history/")
    assert service.active("scheduler").document["scorers"][0]["weight"] == 0.45
    original = service.active("scheduler").parent

    page.fill("form.rollback input[name=reason]", "p95 TTFT went up after the change")
    page.click("form.rollback button")
    page.wait_for_url(f"{server.url}/policies/scheduler/history/")
    restored = service.active("scheduler")
    assert restored.document == original.document and restored.restored_from_id == original.pk
    screenshot(page, "policy-history")

    page.goto(f"{server.url}/audit/?target=policy:scheduler")
    rows = page.inner_text("table.audit")
    assert "policy.create" in rows and "policy.rollback" in rows
    assert rows.count("olga") >= 2
    assert "favour CPU headroom" in rows and "p95 TTFT went up" in rows
    screenshot(page, "audit")
    assert page.js_errors == []


def test_side_by_side_diff_shows_only_the_changed_line(page: Any, server: Server) -> None:
    login(page, server, "olga", "operator")
    page.goto(f"{server.url}/policies/scheduler/")
    document = json.loads(page.input_value("#document"))
    reordered = dict(reversed(list(document.items())))  # same content, keys in another order
    [gpu_free] = [s for s in reordered["scorers"] if s["metric"] == "gpu_free"]
    gpu_free["weight"] = 0.5
    page.fill("#document", json.dumps(reordered, indent=4))
    page.fill("#reason", "x")
    page.click("button[value=preview]")
    changed = page.query_selector_all("table.side-by-side tr.row-changed, table.side-by-side tr.row-added, "
                                      "table.side-by-side tr.row-removed")
    assert len(changed) == 1, [r.inner_text() for r in changed]


def test_schema_errors_show_as_you_type(page: Any, server: Server) -> None:
    login(page, server, "olga", "operator")
    page.goto(f"{server.url}/policies/scaling/")
    page.wait_for_function("document.getElementById('schema-status').textContent.includes('valid')")
    document = json.loads(page.input_value("#document"))
    document["default"]["rules"][0]["threshold"] = -5
    page.fill("#document", json.dumps(document, indent=2))
    page.wait_for_function("document.getElementById('schema-status').textContent.includes('rules[0].threshold')",
                           timeout=5_000)
    assert "default.rules[0].threshold" in page.inner_text("#schema-status")
    stored = service.revisions("scaling").count()
    document["default"]["rules"][0]["threshold"] = 90
    page.fill("#document", json.dumps(document, indent=2))
    page.wait_for_function("document.getElementById('schema-status').textContent.includes('1 change')",
                           timeout=5_000)
    assert service.revisions("scaling").count() == stored  # checking stores nothing
    assert page.js_errors == []
