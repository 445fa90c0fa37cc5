"""The /webhooks/ pages in a real browser: an admin adds a receiver (a real local HTTP server, marked internal),
sees its secret once, sends a test and finds the attempt in the delivery log; an auto-disabled receiver says why
and is re-enabled from the page; an operator is refused.

No Celery worker runs here: the page queues deliveries and the test sends them with `sender.deliver(pk)`, the
function the worker's task calls."""

from __future__ import annotations

from typing import Any

from playwright.sync_api import expect

from control.webhooks import sender
from control.webhooks.events import emit
from control.webhooks.models import Delivery, Receiver
from control.webhooks.verify import verify
from core.audit.models import AuditEvent
from tests.browser.conftest import Server, login, screenshot
from tests.webhooks.conftest import LocalReceiver, receiver  # noqa: F401  (the real local HTTP receiver fixture)

ALERT = {"status": "firing", "labels": {"alertname": "gpu-hot", "severity": "critical", "node": "gpu-a-1"},
         "annotations": {"summary": "GPU 0 of gpu-a-1 at 91 °C"}, "startsAt": "2026-11-28T14:00:00Z",
         "endsAt": "0001-01-01T00:00:00Z", "generatorURL": "http://sy.example/alerts/", "fingerprint": "abc123"}


def test_admin_adds_a_receiver_sees_the_secret_once_and_the_test_delivery_in_the_log(
        page: Any, server: Server, receiver: LocalReceiver) -> None:  # noqa: F811
    login(page, server, "ada", "admin")
    page.goto(f"{server.url}/webhooks/")
    expect(page.locator("#receivers")).to_contain_text("No receivers yet.")
    form = page.locator("#receiver-form")
    form.locator("input[name=name]").fill("oncall")
    form.locator("input[name=url]").fill(receiver.url)
    form.locator("select[name=format]").select_option("slack")
    form.locator("input[name=events][value=rollback]").check()
    form.locator("input[name=internal]").check()  # the receiver listens on 127.0.0.1
    form.locator("input[name=reason]").fill("chat-ops bridge")
    with page.expect_navigation():
        form.locator("button[type=submit]").click()

    r = Receiver.objects.get()
    assert (r.name, r.url, r.format, r.events, r.internal, r.enabled) == (
        "oncall", receiver.url, "slack", ["alert", "rollback"], True, True)
    expect(page.locator("#new-secret")).to_contain_text('Receiver "oncall" created')
    shown = page.locator("#receiver-secret").inner_text().strip()
    assert shown == r.secret and len(shown) >= 32  # a generated one: the field was left blank
    expect(page.locator("#receivers tbody tr", has_text="oncall")).to_contain_text("(internal)")
    event = AuditEvent.objects.get(action="webhook.create")
    assert (event.actor, event.reason) == ("ada", "chat-ops bridge")
    screenshot(page, "webhooks-created")

    # Never again: not on the list (a fresh GET), not on the receiver's page.
    page.goto(f"{server.url}/webhooks/")
    expect(page.locator("#receivers tbody tr", has_text="oncall")).to_contain_text("enabled")
    expect(page.locator("#new-secret")).to_have_count(0)
    assert shown not in page.content()
    page.locator("#receivers a", has_text="oncall").click()
    page.wait_for_url(f"{server.url}/webhooks/{r.pk}/")
    expect(page.locator("#receiver-state")).to_have_text("enabled")
    expect(page.locator("#deliveries")).to_contain_text("Nothing sent yet.")
    assert shown not in page.content()

    with page.expect_navigation():
        page.locator("#send-test").click()
    expect(page.locator(".messages .success")).to_contain_text("Test message queued for oncall")
    [delivery] = Delivery.objects.filter(receiver=r)
    assert delivery.event == "test"
    row = page.locator("#deliveries tbody tr", has_text="test")
    expect(row.locator("td.delivery-pending")).to_have_text("pending")
    expect(row).to_contain_text("not tried yet")

    assert sender.deliver(delivery.pk) == "done"  # what the worker does with the row the page queued
    page.reload()
    row = page.locator("#deliveries tbody tr", has_text="test")
    expect(row.locator("td.delivery-done")).to_have_text("done")
    expect(row).to_contain_text("1/6")
    expect(row).to_contain_text("· 200 ·")
    expect(row).to_contain_text("· ok")
    # The receiver got it, signed with the secret the page showed.
    [got] = receiver.requests
    assert got.headers["x-switchyard-event"] == "test"
    verify(shown, got.headers["x-switchyard-signature"], got.body)
    assert shown not in page.content()
    assert page.js_errors == []


def test_an_auto_disabled_receiver_shows_why_and_is_re_enabled_from_its_page(
        page: Any, server: Server, receiver: LocalReceiver) -> None:  # noqa: F811
    r = Receiver.objects.create(name="oncall", url=receiver.url, secret="s" * 20, events=["alert"], internal=True)
    receiver.answer(410)  # a permanent refusal: not retried, counts towards auto-disable
    for _ in range(sender.AUTO_DISABLE_AFTER):
        [d] = emit("alert", {"alerts": [ALERT]})
        assert sender.deliver(d.pk) == "failed"
    r.refresh_from_db()
    assert not r.enabled

    login(page, server, "ada", "admin")
    page.goto(f"{server.url}/webhooks/")
    row = page.locator("#receivers tbody tr", has_text="oncall")
    expect(row.locator(".state")).to_have_text("disabled")
    expect(row).to_contain_text("auto-disabled after 5 failed deliveries in a row; last error: HTTP 410")
    expect(row.locator("td").last).to_have_text("5")

    row.locator("a", has_text="oncall").click()
    page.wait_for_url(f"{server.url}/webhooks/{r.pk}/")
    expect(page.locator("#receiver-state")).to_contain_text("disabled — auto-disabled after 5 failed deliveries")
    expect(page.locator("#deliveries tbody td.delivery-failed")).to_have_count(sender.AUTO_DISABLE_AFTER)
    expect(page.locator("#deliveries tbody tr").first).to_contain_text("410")
    screenshot(page, "webhook-auto-disabled")

    enable = page.locator("form", has=page.locator("button", has_text="Enable"))
    enable.locator("input[name=reason]").fill("receiver fixed")
    with page.expect_navigation():
        enable.locator("button", has_text="Enable").click()
    expect(page.locator(".messages .success")).to_contain_text("oncall enabled.")
    expect(page.locator("#receiver-state")).to_have_text("enabled")
    expect(page.locator("button", has_text="Disable")).to_have_count(1)
    r.refresh_from_db()
    assert r.enabled and r.consecutive_failures == 0 and r.disabled_reason == ""
    event = AuditEvent.objects.get(action="webhook.update")
    assert (event.actor, event.reason) == ("ada", "receiver fixed")
    assert page.js_errors == []


def test_an_operator_gets_403_on_the_webhook_pages_and_no_link_to_them(page: Any, server: Server) -> None:
    r = Receiver.objects.create(name="oncall", url="https://hooks.example.com/am", secret="s" * 20,
                                events=["alert"])
    login(page, server, "olga", "operator")
    expect(page.locator("header nav a", has_text="Alerts")).to_have_count(1)
    expect(page.locator("header nav a", has_text="Webhooks")).to_have_count(0)
    for path in ("/webhooks/", f"/webhooks/{r.pk}/"):
        response = page.goto(f"{server.url}{path}")
        assert response is not None and response.status == 403, path
        assert "oncall" not in page.content() and "s" * 20 not in page.content()
