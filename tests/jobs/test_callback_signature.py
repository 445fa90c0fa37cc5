"""Issue 13, item 3: a job's callback is signed with a per-job secret returned once at submission.

A real local HTTP receiver (a thread) checks every callback it gets with control/webhooks/verify.py and the secret
from the 201 of POST /api/v1/jobs, the way a user's service would, and refuses (401) what does not verify. The
callback goes through the real sender path: the job ends through control.jobs.service, which queues the Delivery,
and the Celery task `control.webhooks.tasks.deliver` (called in this process) posts it.
"""

from __future__ import annotations

import ipaddress
import json
import logging
import threading
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import pytest

from control.jobs import service
from control.jobs.models import Job, Shard
from control.webhooks import addresses
from control.webhooks.models import Delivery
from control.webhooks.tasks import deliver
from control.webhooks.verify import HEADER, SignatureError, verify
from core.audit.models import AuditEvent

pytestmark = pytest.mark.django_db


@dataclass
class Got:
    headers: dict[str, str]
    body: bytes
    verdict: str  # "ok" or why the signature was refused


@dataclass
class VerifyingReceiver:
    """Answers 204 to a callback whose X-Switchyard-Signature verifies with `secret`, 401 (and why) otherwise."""

    url: str = ""
    secret: str = ""
    got: list[Got] = field(default_factory=list)


@pytest.fixture
def callback_receiver() -> Iterator[VerifyingReceiver]:
    state = VerifyingReceiver()

    class Handler(BaseHTTPRequestHandler):
        def do_POST(self) -> None:  # noqa: N802 - http.server's naming
            body = self.rfile.read(int(self.headers.get("Content-Length") or 0))
            try:
                verify(state.secret, self.headers.get(HEADER), body)
                verdict, status = "ok", 204
            except SignatureError as exc:
                verdict, status = str(exc), 401
            state.got.append(Got({k.lower(): v for k, v in self.headers.items()}, body, verdict))
            self.send_response(status)
            self.send_header("Content-Length", "0")
            self.end_headers()

        def log_message(self, *args: Any) -> None:
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    state.url = f"http://127.0.0.1:{server.server_address[1]}/switchyard/jobs"
    threading.Thread(target=server.serve_forever, daemon=True).start()
    yield state
    server.shutdown()
    server.server_close()


@pytest.fixture
def loopback_allowed(monkeypatch: pytest.MonkeyPatch) -> None:
    """A callback URL is never internal, so the sender refuses 127.0.0.1 (tests/webhooks/test_ssrf.py); these tests
    let loopback, and only loopback, through to reach the local receiver."""
    strict = addresses.refusal

    def refusal(ip: ipaddress.IPv4Address | ipaddress.IPv6Address, internal: bool) -> str | None:
        return None if ip.is_loopback else strict(ip, internal)

    monkeypatch.setattr(addresses, "refusal", refusal)


def submit(api: Callable[..., Any], **extra: Any) -> dict[str, Any]:
    resp = api("operator").post("/api/v1/jobs", {"model": "deepseek-r1", "input": "Summarise this.", **extra},
                                format="json")
    assert resp.status_code == 201, resp.content
    return dict(resp.json())


def finish(job_id: str, output: str) -> Delivery:
    """End the job as the shard task does (one shard, answered) and return the callback's queued delivery."""
    shard = Shard.objects.select_related("job").get(job_id=job_id)
    service.mark_running(shard)
    assert service.complete(shard, "sim-0", output, 3, 5)
    return Delivery.objects.get(event="job", receiver=None, payload__id=job_id)


@pytest.mark.usefixtures("loopback_allowed")
def test_a_job_callback_is_signed_with_the_secret_returned_at_submission(
        api: Callable[..., Any], callback_receiver: VerifyingReceiver) -> None:
    job = submit(api, callback_url=callback_receiver.url)
    secret = job["callback_secret"]
    assert isinstance(secret, str) and len(secret) >= 32
    callback_receiver.secret = secret

    delivery = finish(job["id"], "the summary")
    assert deliver(delivery.pk) == "done"  # the Celery task, run here: 204 from the receiver, which verified it
    [got] = callback_receiver.got
    assert got.verdict == "ok"
    body = json.loads(got.body)
    assert body["event"] == "job" and body["data"]["id"] == job["id"]
    assert body["data"]["status"] == "done" and body["data"]["result"] == "the summary"

    # The secret is the job's own: another job's secret does not verify this notice.
    other = submit(api, callback_url=callback_receiver.url)["callback_secret"]
    assert other != secret
    with pytest.raises(SignatureError, match="does not match"):
        verify(other, got.headers[HEADER.lower()], got.body)


@pytest.mark.usefixtures("loopback_allowed")
def test_a_receiver_holding_another_secret_refuses_the_callback_and_it_is_not_retried(
        api: Callable[..., Any], callback_receiver: VerifyingReceiver) -> None:
    job = submit(api, callback_url=callback_receiver.url)
    callback_receiver.secret = "not-the-secret-of-this-job-at-all"
    delivery = finish(job["id"], "x")
    assert deliver(delivery.pk) == "failed"
    [got] = callback_receiver.got
    assert got.verdict == "signature does not match the body (wrong secret or altered body)"
    delivery.refresh_from_db()
    assert delivery.last_status == 401 and "not retried" in delivery.last_error


@pytest.mark.usefixtures("loopback_allowed")
def test_the_callback_secret_is_shown_once_and_never_in_the_api_pages_audit_or_logs(
        api: Callable[..., Any], browser: Callable[..., Any], callback_receiver: VerifyingReceiver,
        caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.DEBUG)
    job = submit(api, callback_url=callback_receiver.url, reason="nightly")
    secret = job["callback_secret"]
    assert Job.objects.get(pk=job["id"]).callback_secret == secret  # kept to sign with when the job ends
    callback_receiver.secret = secret
    assert deliver(finish(job["id"], "done text").pk) == "done"

    shown = [
        api("operator").get(f"/api/v1/jobs/{job['id']}").content,
        api("operator").get("/api/v1/jobs").content,
        api("admin").get("/api/v1/audit/").content,
        browser("operator").get("/jobs/").content,
        browser("operator").get(f"/jobs/{job['id']}/").content,
    ]
    for content in shown:
        assert secret.encode() not in content
    detail = json.loads(shown[0])
    assert "callback_secret" not in detail and detail["status"] == "done"
    for event in AuditEvent.objects.all():
        assert secret not in json.dumps([event.before, event.after, event.details, event.reason])
    assert AuditEvent.objects.filter(action="job.submit").exists()
    assert secret not in caplog.text

    # Without a callback there is nothing to sign: no secret.
    plain = submit(api)
    assert plain["callback_secret"] is None and Job.objects.get(pk=plain["id"]).callback_secret == ""
