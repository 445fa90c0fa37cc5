"""The /alerts/ page in a real browser: a firing alert raised by the real evaluator, silenced from the page by an
operator (the form and the one-click row button), ended early, refused to a viewer, and bad input explained.

The evaluator is run by the test (no beat here), on a node whose latest sample in Redis is hot, so what the page
shows is what the evaluator wrote. The tests/alerts Django-client tests cover the views' status codes one by one;
these cover what an operator sees and clicks."""

from __future__ import annotations

from datetime import timedelta
from typing import Any

from django.utils import timezone
from playwright.sync_api import expect

from control.alerts import evaluator, silences
from control.alerts.models import Alert, Silence
from core.audit.context import Origin
from core.audit.models import AuditEvent
from dashboard.fleet.models import Node
from dashboard.metrics.latest import store_latest
from tests.alerts.conftest import rule, set_rules
from tests.browser.conftest import Server, login, screenshot
from tests.conftest import make_node

SUMMARY = "GPU 0 of gpu-a-1 at 91 °C"

# Posts the silence form's fields from inside the page, with the page's own CSRF token (from the logout form every
# page has): what a viewer who rebuilt the form by hand would send. Returns [status, body].
FORGED_POST = """async ([url, fields]) => {
  const body = new FormData();
  body.append('csrfmiddlewaretoken', document.querySelector('input[name=csrfmiddlewaretoken]').value);
  for (const [k, v] of Object.entries(fields)) body.append(k, v);
  const r = await fetch(url, {method: 'POST', body, redirect: 'manual'});
  return [r.status, await r.text()];
}"""


def hot_gpu(node: str = "gpu-a-1", temp_c: float = 91.0) -> None:
    """The node exists, reported just now, and GPU 0 of its latest sample is at `temp_c` (tests/alerts' fleet)."""
    if not Node.objects.filter(name=node).exists():
        make_node(node, "pool-a")
    now = timezone.now()
    Node.objects.filter(name=node).update(last_seen=now)
    store_latest(node, {
        "node": node, "pool": "pool-a", "state": "active", "ts": now.isoformat(), "seq": 1,
        "received": now.isoformat(), "host": {}, "inference": {},
        "gpus": [{"index": 0, "uuid": "GPU-0", "name": "H100", "temp_c": temp_c}]})


def firing_alert() -> Alert:
    # for_s=0: the first evaluation fires it (the default rule waits 2 minutes, longer than a sample stays fresh).
    set_rules(rule(for_s=0))
    hot_gpu()
    evaluator.evaluate(timezone.now())
    alert = Alert.objects.get()
    assert alert.state == "firing" and not alert.silenced
    return alert


def evaluate_again() -> Alert:
    hot_gpu()  # keep the sample fresh for this evaluation
    evaluator.evaluate(timezone.now())
    return Alert.objects.get()


def test_operator_silences_a_firing_alert_with_the_form_and_the_page_shows_it_silenced(page: Any,
                                                                                     server: Server) -> None:
    firing_alert()
    login(page, server, "olga", "operator")
    page.goto(f"{server.url}/alerts/")
    row = page.locator("#firing tbody tr", has_text=SUMMARY)
    expect(row).to_have_count(1)
    expect(row).to_contain_text("gpu-hot")
    expect(row).not_to_contain_text("silenced")
    expect(page.locator("#silences")).to_contain_text("No active silences.")

    form = page.locator("#silence-form")
    form.locator("select[name=label0]").select_option("node")
    form.locator("input[name=value0]").fill("gpu-a-1")
    form.locator("select[name=label1]").select_option("alertname")
    form.locator("select[name=op1]").select_option("=~")
    form.locator("input[name=value1]").fill("gpu-.*")
    form.locator("select[name=duration_s]").select_option(label="4 hours")
    form.locator("input[name=reason]").fill("RMA ticket 4711")
    with page.expect_navigation():  # the POST, its redirect and the new /alerts/
        form.locator("button[type=submit]").click()

    silence = Silence.objects.get()
    assert silence.matchers == [{"label": "node", "op": "=", "value": "gpu-a-1"},
                                {"label": "alertname", "op": "=~", "value": "gpu-.*"}]
    assert silence.created_by == "olga" and silence.reason == "RMA ticket 4711"
    assert timedelta(hours=3, minutes=59) < silence.ends_at - silence.starts_at <= timedelta(hours=4)
    expect(page.locator(".messages .success")).to_contain_text(f"Silence {silence.pk} active until")
    active = page.locator("#silences tbody tr", has_text="RMA ticket 4711")
    expect(active).to_contain_text('node="gpu-a-1"')
    expect(active).to_contain_text('alertname=~"gpu-.*"')
    expect(active).to_contain_text("olga")
    event = AuditEvent.objects.get(action="silence.create")
    assert (event.actor, event.target, event.reason) == ("olga", f"silence:{silence.pk}", "RMA ticket 4711")

    # The page shows what the last evaluation decided: silenced only once the evaluator has run with the silence.
    assert evaluate_again().silenced
    page.reload()
    expect(page.locator("#firing tbody tr", has_text=SUMMARY)).to_contain_text("silenced")
    screenshot(page, "alerts-silenced")
    assert page.js_errors == []


def test_one_click_silence_from_the_alert_row_then_ending_it_early(page: Any, server: Server) -> None:
    firing_alert()
    login(page, server, "olga", "operator")
    page.goto(f"{server.url}/alerts/")
    row_form = page.locator("#firing tbody tr", has_text=SUMMARY).locator("form.silence-alert")
    row_form.locator("input[name=reason]").fill("cooling fan swap")
    with page.expect_navigation():
        row_form.locator("button[type=submit]").click()
    silence = Silence.objects.get()
    # Rule + node + GPU of that alert, nothing broader.
    assert silence.matchers == [{"label": "alertname", "op": "=", "value": "gpu-hot"},
                                {"label": "node", "op": "=", "value": "gpu-a-1"},
                                {"label": "gpu", "op": "=", "value": "0"}]
    assert silence.ends_at - silence.starts_at <= timedelta(hours=1)  # the first offered duration
    expect(page.locator("#silences tbody tr", has_text="cooling fan swap")).to_contain_text('gpu="0"')
    assert evaluate_again().silenced

    page.locator("#silences tbody tr", has_text="cooling fan swap").locator("input[name=reason]").fill("fan done")
    with page.expect_navigation():
        page.locator("#silences tbody tr", has_text="cooling fan swap").locator("button", has_text="End now").click()
    expect(page.locator(".messages .success")).to_contain_text(f"Silence {silence.pk} ended")
    expect(page.locator("#silences")).to_contain_text("No active silences.")
    expect(page.locator("main")).to_contain_text("ended early by olga: fan done")
    ended = AuditEvent.objects.get(action="silence.expire")
    assert (ended.actor, ended.target, ended.reason) == ("olga", f"silence:{silence.pk}", "fan done")
    assert not evaluate_again().silenced
    page.reload()
    expect(page.locator("#firing tbody tr", has_text=SUMMARY)).not_to_contain_text("silenced")
    assert page.js_errors == []


def test_a_viewer_sees_alerts_but_no_silence_controls_and_a_forged_post_is_refused(page: Any,
                                                                                  server: Server) -> None:
    firing_alert()
    existing = silences.create([{"label": "pool", "op": "=", "value": "pool-b"}],
                               timezone.now() + timedelta(hours=1), "pool-b drained", Origin.system("test"))
    login(page, server, "vera", "viewer")
    page.goto(f"{server.url}/alerts/")
    expect(page.locator("#firing tbody tr", has_text=SUMMARY)).to_have_count(1)
    expect(page.locator("#silences tbody tr", has_text="pool-b drained")).to_have_count(1)
    # No way to silence or end a silence from the page.
    expect(page.locator("#silence-form")).to_have_count(0)
    expect(page.locator("form.silence-alert")).to_have_count(0)
    expect(page.locator("#silences button", has_text="End now")).to_have_count(0)

    audit_before = AuditEvent.objects.count()
    status, body = page.evaluate(FORGED_POST, ["/alerts/silences/", {
        "label0": "node", "op0": "=", "value0": "gpu-a-1", "duration_s": "3600", "reason": "viewer was here"}])
    # The role check refused it, not CSRF (the token was valid): a CSRF failure says so in its body.
    assert status == 403 and "CSRF" not in body, (status, body[:300])
    status, body = page.evaluate(FORGED_POST, [f"/alerts/silences/{existing.pk}/expire/", {"reason": "nope"}])
    assert status == 403 and "CSRF" not in body, (status, body[:300])
    assert list(Silence.objects.values_list("pk", flat=True)) == [existing.pk]
    existing.refresh_from_db()
    assert existing.expired_at is None
    assert AuditEvent.objects.count() == audit_before
    assert page.js_errors == []


def test_bad_silence_input_shows_the_reason_and_stores_nothing(page: Any, server: Server) -> None:
    firing_alert()
    login(page, server, "olga", "operator")
    page.goto(f"{server.url}/alerts/")
    form = page.locator("#silence-form")

    def submit(label: str, op: str, value: str, reason: str) -> None:
        form.locator("select[name=label0]").select_option(label)
        form.locator("select[name=op0]").select_option(op)
        form.locator("input[name=value0]").fill(value)
        form.locator("input[name=reason]").fill(reason)
        with page.expect_navigation():
            form.locator("button[type=submit]").click()

    # An empty reason is stopped by the browser (required) before anything is sent.
    form.locator("select[name=label0]").select_option("node")
    form.locator("input[name=value0]").fill("gpu-a-1")
    form.locator("button[type=submit]").click()
    assert form.locator("input[name=reason]").evaluate("el => el.validity.valueMissing") is True
    # A blank one passes the browser and is refused by the server.
    submit("node", "=", "gpu-a-1", "   ")
    expect(page.locator(".messages .error")).to_contain_text("A silence needs a reason")

    submit("node", "=~", "gpu-((", "broken regex")
    expect(page.locator(".messages .error")).to_contain_text("Not silenced: matchers[0].value")
    expect(page.locator(".messages .error")).to_contain_text("regular expression")

    submit("", "=", "", "no matchers at all")
    expect(page.locator(".messages .error")).to_contain_text("Not silenced: a silence needs at least one matcher")

    # Only the offered durations: a hand-edited one (here: already over) is refused, not turned into a silence.
    form.locator("select[name=duration_s] option").first.evaluate("el => { el.value = '-3600'; }")
    form.locator("select[name=duration_s]").select_option("-3600")
    submit("node", "=", "gpu-a-1", "ends in the past")
    expect(page.locator(".messages .error")).to_contain_text("Pick one of the offered durations")

    assert Silence.objects.count() == 0
    assert not AuditEvent.objects.filter(action="silence.create").exists()
    expect(page.locator("#silences")).to_contain_text("No active silences.")
    assert page.js_errors == []
