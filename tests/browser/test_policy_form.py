"""In a real browser: the policy editor's form view edits the same JSON document as the text view, validates each
input as it is typed (errors by field), and what it saves is exactly what the JSON editor would have saved."""

from __future__ import annotations

import copy
import json
from typing import Any

from control.policy import service
from tests.browser.conftest import Server, login, screenshot


def test_form_and_json_editor_produce_the_same_document(page: Any, server: Server) -> None:
    login(page, server, "olga", "operator")
    page.goto(f"{server.url}/policies/scheduler/")
    page.wait_for_selector("#policy-form-view input[data-path='scorers[0].weight']")
    original = json.loads(page.input_value("#document"))

    # The same two edits, once by hand in the JSON...
    expected = copy.deepcopy(original)
    expected["scorers"][0]["weight"] = 0.45
    expected["filters"]["max_gpu_util_pct"] = 90
    expected["scorers"][1]["invert"] = False
    expected["picker"]["strategy"] = "least_in_flight"

    # ... and once in the form, which writes the JSON view as it goes.
    assert "(%)" in page.inner_text("div.pf-row[data-path='filters.max_gpu_util_pct']")  # the unit
    assert "0 – 100" in page.inner_text("div.pf-row[data-path='filters.max_gpu_util_pct']")  # the range
    page.fill("input[data-path='scorers[0].weight']", "0.45")
    page.fill("input[data-path='filters.max_gpu_util_pct']", "90")
    page.uncheck("input[data-path='scorers[1].invert']")
    page.select_option("select[data-path='picker.strategy']", "least_in_flight")
    assert json.loads(page.input_value("#document")) == expected

    # An out-of-range value: the form names the field at once, the server's check names it too.
    page.fill("input[data-path='filters.max_kv_cache_pct']", "140")
    row = "div.pf-row[data-path='filters.max_kv_cache_pct']"
    assert "filters.max_kv_cache_pct: 140 is above 100" in page.inner_text(row)
    page.wait_for_function("document.getElementById('schema-status').textContent.includes('max_kv_cache_pct')")
    page.fill("input[data-path='filters.max_kv_cache_pct']", str(original["filters"]["max_kv_cache_pct"]))
    assert page.inner_text(f"{row} .pf-error") == ""
    assert json.loads(page.input_value("#document")) == expected
    screenshot(page, "policy-form")

    # Typing in the JSON view moves the form.
    edited = copy.deepcopy(expected)
    edited["load"]["node_capacity"] = 48
    page.fill("#document", json.dumps(edited, indent=2))
    page.wait_for_function(
        "document.querySelector(\"input[data-path='load.node_capacity']\").value === '48'")

    page.fill("#reason", "same change, made in the form")
    page.click("button[value=save]")
    page.wait_for_url(f"{server.url}/policies/scheduler/history/")
    assert service.active("scheduler").document == edited
    assert page.js_errors == []


def test_the_form_covers_scaling_and_priorities(page: Any, server: Server) -> None:
    login(page, server, "olga", "operator")
    page.goto(f"{server.url}/policies/priorities/")
    page.wait_for_selector("input[data-path='classes[0].queue_limit']")
    assert "requests that may wait" in page.inner_text("div.pf-row[data-path='classes[0].queue_limit']")
    page.goto(f"{server.url}/policies/scaling/")
    page.wait_for_selector("input[data-path='default.rules[0].threshold']")
    for path in ("default.rules[0].step", "default.rules[0].cooldown_s", "default.min_nodes"):
        assert page.locator(f"input[data-path='{path}']").count() == 1, path
    page.fill("input[data-path='default.rules[0].cooldown_s']", "120")
    assert json.loads(page.input_value("#document"))["default"]["rules"][0]["cooldown_s"] == 120
    assert page.js_errors == []
