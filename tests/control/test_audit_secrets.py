"""No secret reaches the audit, which every viewer reads and nothing can take back.

The walk: every audit action the code can write is found in the source (each `record(...)` call), and each is either
driven here with secrets planted in its input (receiver URLs and secrets, provider URLs, callback URLs, API and node
tokens, passwords) or listed with the reason its input cannot carry one. A new action fails this file until someone
decides which it is.
"""

from __future__ import annotations

import ast
import json
import re
from collections.abc import Callable
from io import StringIO
from pathlib import Path
from typing import Any

import pytest
from django.core.management import call_command

from core.audit.models import AuditEvent
from core.audit.redact import REDACTED, fingerprint, redact_url, scrub
from tests.conftest import make_node
from tests.control.conftest import events_since, last_event_id

ROOT = Path(__file__).resolve().parents[2]
SLACK = "https://hooks.slack.com/services/T0SECRET1/B0SECRET2/XsecretXsecretXsecret42"
SLACK_2 = "https://hooks.slack.com/services/T0SECRET1/B0SECRET3/YsecretYsecretYsecret43"
RECEIVER_SECRET = "receiver-signing-secret-0123456789"
CALLBACK = "https://jobs.example.com/hook/cb-secret-path-77?sig=callback-secret-query-88"
PASSWORD = "hunter2-but-much-longer-77"

# Actions whose input holds no secret-bearing field: ids, names, sizes, states, policy documents (which the schemas
# keep free of credentials and viewers read anyway) and reasons. Each entry says why.
NO_SECRET_INPUT = {
    "policy.create": "a policy document: schema-checked, no credential fields, readable by viewers in full",
    "policy.activate": "as policy.create",
    "policy.rollback": "as policy.create",
    "guard.rollback": "SLO figures before/after a policy change",
    "node.{}": "drain/cordon/uncordon: the node's state",
    "node.remove": "the node's name and the action that removed it",
    "node.join": "the node's name and pool",
    "scaling.{}": "pool sizes and the metric values behind them",
    "deployment.{}": "a rollout's steps: revision ids, node names, the provider's request id and error (no "
                     "credential: extra_args refuse credential flags, control/policy/deployment.py SECRET_FLAG)",
    "scaling.failed": "the provider's error, which names no credential (providers read them from files)",
    "power.cap": "watts per pool",
    "power.converged": "node names and watts",
    "power.not_converged": "node names and watts",
    "silence.create": "matchers and times",
    "silence.expire": "matchers and times",
    "job.cancel": "the job's status",
    "user.create": "the role",
    "user.role": "the role",
    "pool.{}": "admin form: the pool's name and settings",
    "node.create": "the node's pool and inference endpoint (a base URL: recorded as scheme and host anyway)",
    "audit.redact": "the migration that redacted old events: counts and ids",
    "canary.start": "revision ids, steps (weights, pauses), analysis thresholds and (scaling) the pool name",
    "canary.step": "as canary.start, with the analysis figures",
    "canary.pause": "as canary.start",
    "canary.resume": "as canary.start",
    "canary.promote": "revision ids",
    "canary.abort": "revision ids, the weight and the failed analysis figures",
}


def source_actions() -> set[str]:
    """Every action string passed to record(), with f-string holes as '{}' (the admin's audit_kind expanded)."""
    found: set[str] = set()
    kinds: set[str] = set()
    for path in [*ROOT.glob("control/**/*.py"), *ROOT.glob("core/**/*.py"), *ROOT.glob("dashboard/**/*.py")]:
        if "migrations" in path.parts:
            continue
        tree = ast.parse(path.read_text())
        for node in ast.walk(tree):
            if isinstance(node, ast.Assign) and any(isinstance(t, ast.Name) and t.id == "audit_kind"
                                                    for t in node.targets):
                if isinstance(node.value, ast.Constant) and node.value.value:
                    kinds.add(node.value.value)
            if not (isinstance(node, ast.Call) and isinstance(node.func, ast.Name) and node.func.id == "record"):
                continue
            if len(node.args) < 2:
                continue
            arg = node.args[1]
            if isinstance(arg, ast.Constant) and isinstance(arg.value, str):
                found.add(arg.value)
            elif isinstance(arg, ast.JoinedStr):
                found.add("".join(v.value if isinstance(v, ast.Constant) else "{}" for v in arg.values))
            elif path.name == "admin_audit.py":  # AuditedAdmin: "<audit_kind>.create|update", expanded below
                continue
            else:
                raise AssertionError(f"{path}:{node.lineno}: record() with an action that is not a literal")
    for kind in kinds:
        found.add(f"{kind}.{{}}")
    found.add("audit.redact")
    return found


def exercised_actions() -> set[str]:
    return {
        "webhook.create", "webhook.update", "webhook.delete", "webhook.auto_disable",
        "provider.set", "provider.remove", "token.create", "token.revoke", "token.{}", "user.{}", "nodetoken.{}",
        "user.password", "node.token.create", "node.token.revoke", "job.submit",
    }


def test_every_audit_action_in_the_code_is_either_walked_here_or_has_no_secret_input() -> None:
    actions = source_actions()
    unclassified = actions - exercised_actions() - set(NO_SECRET_INPUT)
    assert not unclassified, (f"audit actions {sorted(unclassified)} are new: drive them in "
                              "test_no_secret_survives_in_any_audit_event or list them in NO_SECRET_INPUT with why")
    stale = (exercised_actions() | set(NO_SECRET_INPUT)) - actions
    assert not stale, f"listed here but no longer in the code: {sorted(stale)}"


def test_redact_url_keeps_scheme_host_and_a_fingerprint_only() -> None:
    red = redact_url(SLACK)
    assert red == f"https://hooks.slack.com/… [sha256:{fingerprint(SLACK)}]"
    assert "T0SECRET1" not in red and "services" not in red
    assert redact_url(SLACK_2) != red  # a changed key still shows as a change
    assert redact_url("http://[::1]:9000/x?y=z").startswith("http://[::1]:9000/… [sha256:")
    assert "pw" not in redact_url("https://user:pw@example.com/a")
    assert "sha256:" in redact_url("http://[bad")


def test_scrub_redacts_secret_keys_urls_and_tokens_but_keeps_facts() -> None:
    value = {
        "secret": "s3cr3t-value", "password": "x" * 20, "api_token": "abc", "Client-Secret": "zz",
        "secret_changed": True, "token_budget": 4000, "tokens": ["sy_node_AbCdEfGh", "sy_node_AbCdEfGhIjKl"],
        "nested": [{"url": SLACK, "note": f"posted to {SLACK} and {CALLBACK}"}],
        "reason": "used sy_user_0123456789abcdefghijklmnop by mistake", "masked": "***",
    }
    out = scrub(value)
    assert out["secret"] == out["password"] == out["api_token"] == out["Client-Secret"] == REDACTED
    assert out["secret_changed"] is True and out["token_budget"] == 4000 and out["masked"] == "***"
    assert out["tokens"] == ["sy_node_AbCdEfGh", "sy_node_AbCdEfGh…"]  # a display prefix is kept as it is
    text = json.dumps(out)
    for secret in ("T0SECRET1", "cb-secret-path-77", "callback-secret-query-88", "0123456789abcdefghijklmnop"):
        assert secret not in text
    assert "hooks.slack.com" in text and "jobs.example.com" in text
    assert value["secret"] == "s3cr3t-value"  # the caller's object is untouched


def _planted(tokens: list[str]) -> list[str]:
    # What must never appear: the secret parts of each URL, the receiver secret, whole tokens and passwords.
    return ["T0SECRET1", "B0SECRET2", "XsecretXsecret", "YsecretYsecret", "cb-secret-path-77",
            "callback-secret-query-88", "fleet-secret-path-99", RECEIVER_SECRET, PASSWORD, *tokens]


def test_no_secret_survives_in_any_audit_event(api: Callable[..., Any], browser: Callable[..., Any],
                                               tokens: dict[str, str]) -> None:
    from control.webhooks import sender
    from control.webhooks.models import Receiver
    from dashboard.fleet.models import NodeToken, Pool

    admin = api("admin")
    seen_tokens = list(tokens.values())
    mark = last_event_id()

    # Webhooks: create (URL with the key in its path, a chosen secret), update to another URL, auto-disable on a
    # redirect whose Location carries a secret, delete.
    r = admin.post("/api/v1/webhooks/", {"name": "slack", "url": SLACK, "secret": RECEIVER_SECRET,
                                         "format": "slack", "events": ["alert"], "reason": "pager"}, format="json")
    assert r.status_code == 201, r.content
    rid = r.json()["id"]
    assert admin.patch(f"/api/v1/webhooks/{rid}/", {"url": SLACK_2, "reason": "rotated"},
                       format="json").status_code == 200
    Receiver.objects.filter(pk=rid).update(consecutive_failures=sender.AUTO_DISABLE_AFTER - 1)
    from django.db import transaction
    with transaction.atomic():
        sender._count(rid, False, f"HTTP 302: redirects are not followed ({SLACK_2})")
    assert not Receiver.objects.get(pk=rid).enabled
    assert admin.delete(f"/api/v1/webhooks/{rid}/", {"reason": "gone"}, format="json").status_code == 204

    # Providers: a URL with a path (the only place a provider config could carry one).
    Pool.objects.create(name="pool-s")
    fleet_url = "http://fleet.internal:8399/fleet-secret-path-99"
    assert admin.put("/api/v1/providers/pool-s/", {"kind": "local", "config": {"url": fleet_url},
                                                   "reason": "bind"}, format="json").status_code == 200
    assert admin.delete("/api/v1/providers/pool-s/", {"reason": "unbind"}, format="json").status_code in (200, 204)

    # API tokens: issued and revoked through the API; a token pasted into a reason by mistake.
    t = admin.post("/api/v1/tokens/", {"name": "ci", "reason": "ci bot"}, format="json")
    assert t.status_code == 201
    seen_tokens.append(t.json()["token"])
    assert admin.post(f"/api/v1/tokens/{t.json()['id']}/revoke/",
                      {"reason": f"leaked as {t.json()['token']}"}, format="json").status_code == 200

    # Commands: a user with a password, a node and its rotated token.
    out = StringIO()
    call_command("createuser", "opal", "--role", "viewer", "--password", PASSWORD, stdout=out)
    seen_tokens.append(out.getvalue().strip().splitlines()[-1])
    seen_tokens.append(make_node("gpu-s-1", "pool-s"))
    out = StringIO()
    call_command("createnode", "gpu-s-1", "--pool", "pool-s", "--rotate", stdout=out)
    seen_tokens.append(out.getvalue().strip().splitlines()[-1])

    # The admin: a password change, and token rows (which hold digests) saved through their change forms.
    client = browser("admin")
    client.handler.enforce_csrf_checks = False
    from django.contrib.auth import get_user_model
    opal = get_user_model().objects.get(username="opal")
    resp = client.post(f"/admin/auth/user/{opal.pk}/password/",
                       {"password1": PASSWORD + "x", "password2": PASSWORD + "x", "audit_reason": "reset"})
    assert resp.status_code == 302, resp.content.decode()[-1500:]
    nt = NodeToken.objects.filter(node__name="gpu-s-1", revoked__isnull=True).first()
    assert nt is not None
    seen_digests = [nt.digest]

    # Jobs: a callback URL whose path and query are the receiver's credential.
    job = admin.post("/api/v1/jobs", {"model": "m", "input": "hello", "callback_url": CALLBACK,
                                      "reason": "nightly"}, format="json")
    assert job.status_code in (201, 202), job.content
    seen_tokens.append(job.json()["callback_secret"])  # the callback's signing key, returned once

    events = events_since(mark)
    written = {e.action for e in events}
    for action in ("webhook.create", "webhook.update", "webhook.auto_disable", "webhook.delete", "provider.set",
                   "provider.remove", "token.create", "token.revoke", "user.create", "user.password",
                   "node.create", "node.token.create", "node.token.revoke", "job.submit"):
        assert action in written, f"{action} was not written by this walk: {sorted(written)}"
    secrets = _planted(seen_tokens) + seen_digests
    for e in events:
        text = json.dumps([e.before, e.after, e.details, e.reason])
        leaked = [s for s in secrets if s in text]
        assert not leaked, f"{e.action} recorded {leaked}: {text[:500]}"
    created = next(e for e in events if e.action == "webhook.create")
    assert created.after["url"] == redact_url(SLACK)

    # And the reproduction from the issue: a viewer's read of the audit, API and page, shows none of it.
    viewer = api("viewer")
    body = viewer.get("/api/v1/audit/", {"action": "webhook.create"}).content.decode()
    assert "hooks.slack.com" in body and not [s for s in secrets if s in body]
    everything = viewer.get("/api/v1/audit/", {"page_size": 500}).content.decode()
    assert not [s for s in secrets if s in everything]
    page = browser("viewer").get("/audit/").content.decode()
    assert not [s for s in secrets if s in page]


def test_the_receivers_own_api_still_answers_admins_only(api: Callable[..., Any]) -> None:
    admin = api("admin")
    r = admin.post("/api/v1/webhooks/", {"name": "slack", "url": SLACK, "format": "slack", "events": ["alert"],
                                         "reason": "pager"}, format="json")
    assert r.status_code == 201
    assert admin.get(f"/api/v1/webhooks/{r.json()['id']}/").json()["url"] == SLACK
    for role in ("viewer", "operator"):
        assert api(role).get(f"/api/v1/webhooks/{r.json()['id']}/").status_code == 403


@pytest.mark.django_db(transaction=True)
def test_the_migration_redacts_secrets_recorded_by_earlier_versions() -> None:
    from django.db import connection
    from django.db.migrations.executor import MigrationExecutor

    executor = MigrationExecutor(connection)
    executor.migrate([("audit", "0001_initial")])
    try:
        with connection.cursor() as cur:
            cur.execute(
                "INSERT INTO audit_auditevent (time, actor, action, target, before, after, details, reason, "
                "request_id) VALUES (now(), 'admin', 'webhook.create', 'webhook:1', NULL, %s, '{}', %s, 'r1') "
                "RETURNING id",
                [json.dumps({"name": "slack", "url": SLACK, "secret": RECEIVER_SECRET}), "pasted sy_user_" + "q" * 40])
            old = cur.fetchone()[0]
            cur.execute("INSERT INTO audit_auditevent (time, actor, action, target, after, details, reason, "
                        "request_id) VALUES (now(), 'op', 'node.drain', 'node:a', %s, '{}', 'maint', 'r2') "
                        "RETURNING id", [json.dumps({"state": "draining"})])
            clean = cur.fetchone()[0]
    finally:
        executor = MigrationExecutor(connection)
        executor.loader.build_graph()
        executor.migrate(executor.loader.graph.leaf_nodes())
    event = AuditEvent.objects.get(pk=old)
    assert event.after == {"name": "slack", "url": redact_url(SLACK), "secret": REDACTED}
    assert "q" * 40 not in event.reason
    assert AuditEvent.objects.get(pk=clean).after == {"state": "draining"}
    note = AuditEvent.objects.get(action="audit.redact")
    assert note.details["events"] == 1 and note.details["ids"] == [old]
    # The table is append-only again afterwards.
    from django.db import DatabaseError, transaction
    with pytest.raises(DatabaseError), transaction.atomic(), connection.cursor() as cur:
        cur.execute("UPDATE audit_auditevent SET reason = 'x' WHERE id = %s", [clean])
    assert re.match(r"^maint$", AuditEvent.objects.get(pk=clean).reason)
