"""POST/GET /api/v1/jobs and cancel: validation (field paths, nothing stored), roles, audit. No worker runs here
(the tests' transaction never commits, so nothing is enqueued); tests/jobs/test_jobs_gateway_e2e.py and
test_jobs_failure_shapes.py run jobs for real."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import pytest

from control.jobs.models import Job, Shard
from control.policy import service as policy_service
from core.audit.context import Origin
from core.audit.models import AuditEvent

pytestmark = pytest.mark.django_db

GOOD = {"model": "deepseek-r1", "input": "Summarise this."}


def submit(api: Callable[..., Any], role: str = "operator", **body: Any) -> Any:
    return api(role).post("/api/v1/jobs", {**GOOD, **body}, format="json")


def test_operator_submits_a_job_and_it_is_stored_with_one_shard_and_audited(api: Callable[..., Any]) -> None:
    resp = submit(api, max_tokens=128, temperature=0.2, callback_url="https://hooks.example.com/jobs",
                  reason="nightly summary")
    assert resp.status_code == 201, resp.content
    data = resp.json()
    assert data["status"] == "queued" and data["priority"] == "batch" and data["owner"] == "operator"
    assert data["progress"] == {"done": 0, "total": 1, "percent": 0.0}
    assert resp["Location"] == f"/api/v1/jobs/{data['id']}"
    job = Job.objects.get(pk=data["id"])
    assert (job.max_tokens, job.temperature, job.callback_url) == (128, 0.2, "https://hooks.example.com/jobs")
    assert [s.input for s in job.shards.all()] == ["Summarise this."]
    event = AuditEvent.objects.get(action="job.submit")
    assert event.target == f"job:{job.id}" and event.actor == "operator" and event.reason == "nightly summary"
    assert event.after["shards"] == 1 and event.after["priority"] == "batch"


def test_a_sharded_job_is_split_by_its_token_budget(api: Callable[..., Any]) -> None:
    text = "\n\n".join(f"Paragraph {i}. " + "word " * 40 for i in range(10))  # ~215 chars per paragraph
    resp = submit(api, input=text, shard={"token_budget": 64}, priority="standard")
    assert resp.status_code == 201, resp.content
    job = Job.objects.get(pk=resp.json()["id"])
    shards = list(job.shards.order_by("index"))
    assert job.shards_total == len(shards) == 10 and job.token_budget == 64
    assert [s.input.split(".")[0] for s in shards] == [f"Paragraph {i}" for i in range(10)]


def test_messages_are_accepted_instead_of_input(api: Callable[..., Any]) -> None:
    msgs = [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Hi"}]
    resp = api("operator").post("/api/v1/jobs", {"model": "m", "messages": msgs}, format="json")
    assert resp.status_code == 201
    assert Job.objects.get(pk=resp.json()["id"]).messages == msgs


BAD = [
    ({"model": ""}, "model", "required"),
    ({"model": "bad model name"}, "model", "letters, digits"),
    ({"input": None}, "input", "send input (a string) or messages"),
    ({"input": ""}, "input", "non-empty string"),
    ({"input": 42}, "input", "non-empty string"),
    ({"input": "x" * 1_000_001}, "input", "the limit is 1000000"),
    ({"messages": [{"role": "user", "content": "hi"}]}, "input", "not both"),
    ({"max_tokens": 0}, "max_tokens", "outside 1..32768"),
    ({"max_tokens": 40000}, "max_tokens", "outside 1..32768"),
    ({"max_tokens": "10"}, "max_tokens", "expected an integer"),
    ({"temperature": 3}, "temperature", "outside 0.0..2.0"),
    ({"temperature": True}, "temperature", "expected a number"),
    ({"priority": "vip"}, "priority", "realtime, standard, batch"),
    ({"callback_url": "ftp://example.com/x"}, "callback_url", "use http:// or https://"),
    ({"callback_url": "https://user:pw@example.com/"}, "callback_url", "credentials"),
    ({"callback_url": "http:///nohost"}, "callback_url", "no host"),
    ({"shard": {"token_budget": 10}}, "shard.token_budget", "outside 64..32768"),
    ({"shard": {"token_budget": 100000}}, "shard.token_budget", "outside 64..32768"),
    ({"shard": {}}, "shard.token_budget", "required"),
    ({"shard": {"token_budget": 64, "overlap": 5}}, "shard.overlap", "unknown field"),
    ({"shard": 64}, "shard", "expected an object"),
    ({"input": "word " * 20_000, "shard": {"token_budget": 64}}, "shard.token_budget", "the limit is 256"),
    ({"colour": "blue"}, "colour", "unknown field"),
    ({"callback_secret": "chosen-by-me"}, "callback_secret", "unknown field"),  # Switchyard makes the secret
]


@pytest.mark.parametrize(("change", "field", "message"), BAD, ids=[f"{b[1]}-{i}" for i, b in enumerate(BAD)])
def test_bad_input_is_refused_with_the_field_path_and_nothing_is_stored(
        api: Callable[..., Any], change: dict[str, Any], field: str, message: str) -> None:
    resp = submit(api, **change)
    assert resp.status_code == 400, resp.content
    body = resp.json()
    assert message in body["fields"][field], body
    assert field in body["error"] or len(body["fields"]) > 1
    assert Job.objects.count() == 0 and Shard.objects.count() == 0
    assert not AuditEvent.objects.filter(action="job.submit").exists()


def test_bad_messages_name_the_element(api: Callable[..., Any]) -> None:
    resp = api("operator").post("/api/v1/jobs", {"model": "m", "messages": [
        {"role": "user", "content": "ok"}, {"role": "robot", "content": 5}]}, format="json")
    assert resp.status_code == 400
    assert set(resp.json()["fields"]) == {"messages[1].role", "messages[1].content"}
    assert Job.objects.count() == 0


def test_sharding_messages_is_refused(api: Callable[..., Any]) -> None:
    resp = api("operator").post("/api/v1/jobs", {"model": "m", "messages": [{"role": "user", "content": "x"}],
                                                 "shard": {"token_budget": 64}}, format="json")
    assert resp.status_code == 400 and "only an `input` string" in resp.json()["fields"]["shard"]


def test_the_priority_must_be_a_class_of_the_active_policy(api: Callable[..., Any]) -> None:
    assert submit(api, priority="nightly").status_code == 400
    active = policy_service.active("priorities")
    doc = {**active.document, "classes": [*active.document["classes"], {
        "name": "nightly", "sheddable": True, "queue_limit": 10, "queue_timeout_s": 60.0}]}
    policy_service.create_revision("priorities", doc, "add nightly", active.pk, Origin.system("test"))
    assert submit(api, priority="nightly").status_code == 201


def test_a_body_that_is_not_an_object_is_refused(api: Callable[..., Any]) -> None:
    resp = api("operator").post("/api/v1/jobs", ["model"], format="json")
    assert resp.status_code == 400 and Job.objects.count() == 0


def test_roles(api: Callable[..., Any], tokens: dict[str, str]) -> None:
    assert api(None).post("/api/v1/jobs", GOOD, format="json").status_code in (401, 403)
    assert submit(api, "viewer").status_code == 403
    assert Job.objects.count() == 0
    op_job = submit(api, "operator").json()["id"]
    admin_job = submit(api, "admin").json()["id"]
    # Operators and admins see every job; a viewer sees only their own (none) and gets 404 for others'.
    assert {j["id"] for j in api("operator").get("/api/v1/jobs").json()["results"]} == {op_job, admin_job}
    assert api("admin").get(f"/api/v1/jobs/{op_job}").status_code == 200
    assert api("viewer").get("/api/v1/jobs").json() == {"count": 0, "results": []}
    assert api("viewer").get(f"/api/v1/jobs/{op_job}").status_code == 404
    assert api(None).get(f"/api/v1/jobs/{op_job}").status_code in (401, 403)
    # A job owned by the viewer (submitted while they were an operator) is theirs to read.
    viewer_user = Job.objects.get(pk=op_job).owner.__class__.objects.get(username="viewer")
    Job.objects.filter(pk=op_job).update(owner=viewer_user)
    assert [j["id"] for j in api("viewer").get("/api/v1/jobs").json()["results"]] == [op_job]
    detail = api("viewer").get(f"/api/v1/jobs/{op_job}").json()
    assert detail["shards"][0]["status"] == "pending" and detail["result"] == ""
    assert api("viewer").post(f"/api/v1/jobs/{op_job}/cancel", {}, format="json").status_code == 403


def test_list_filters_and_bad_list_parameters(api: Callable[..., Any]) -> None:
    submit(api)
    client = api("operator")
    assert client.get("/api/v1/jobs?status=queued").json()["count"] == 1
    assert client.get("/api/v1/jobs?status=done").json()["count"] == 0
    bad = client.get("/api/v1/jobs?status=finished&limit=0")
    assert bad.status_code == 400 and set(bad.json()["fields"]) == {"status", "limit"}
    assert client.get("/api/v1/jobs/not-a-uuid").status_code == 404


def test_cancel_is_audited_and_only_once(api: Callable[..., Any]) -> None:
    job_id = submit(api, input="a\n\nb", shard={"token_budget": 64}).json()["id"]
    client = api("admin")
    resp = client.post(f"/api/v1/jobs/{job_id}/cancel", {"reason": "wrong model"}, format="json")
    assert resp.status_code == 200, resp.content
    assert resp.json()["status"] == "cancelled" and "wrong model" in resp.json()["error"]
    assert {s.status for s in Shard.objects.filter(job_id=job_id)} == {"cancelled"}
    event = AuditEvent.objects.get(action="job.cancel")
    assert (event.actor, event.target, event.reason) == ("admin", f"job:{job_id}", "wrong model")
    assert event.before == {"status": "queued"} and event.after == {"status": "cancelled"}
    again = client.post(f"/api/v1/jobs/{job_id}/cancel", {}, format="json")
    assert again.status_code == 409 and "already cancelled" in again.json()["error"]
    assert AuditEvent.objects.filter(action="job.cancel").count() == 1
    assert client.post(f"/api/v1/jobs/{job_id}/cancel", {"why": "x"}, format="json").status_code in (400, 409)


def test_pages(browser: Callable[..., Any], api: Callable[..., Any]) -> None:
    job_id = submit(api, input="a\n\nb").json()["id"]
    page = browser("operator").get("/jobs/")
    assert page.status_code == 200 and f'data-job="{job_id}"' in page.content.decode()
    assert "/static/switchyard/jobs.js" in page.content.decode()
    detail = browser("operator").get(f"/jobs/{job_id}/")
    assert detail.status_code == 200 and "<progress" in detail.content.decode()
    assert browser("viewer").get("/jobs/").status_code == 200
    assert f'data-job="{job_id}"' not in browser("viewer").get("/jobs/").content.decode()
    assert browser("viewer").get(f"/jobs/{job_id}/").status_code == 404
    anon = browser(None).get("/jobs/")
    assert anon.status_code == 302 and "/accounts/login/" in anon["Location"]


def test_a_job_cannot_ask_for_a_class_above_what_its_submitter_may_use(api: Callable[..., Any],
                                                                       tokens: dict[str, str]) -> None:
    """The job runner sends every shard with the internal token (any class), so the ceiling holds here: an
    operator's session or default-class token gets the default at most; a token of a higher class (issued by an
    admin) allows that class; an admin may ask for any."""
    mark = AuditEvent.objects.count()
    resp = submit(api, "operator", priority="realtime")
    assert resp.status_code == 403, resp.content
    assert resp.json()["fields"]["priority"].startswith("priority 'realtime' is above what you may ask for: "
                                                        "'standard'")
    assert Job.objects.count() == 0 and AuditEvent.objects.count() == mark  # nothing stored, nothing audited
    assert submit(api, "operator", priority="standard").status_code == 201
    assert submit(api, "admin", priority="realtime").status_code == 201

    issued = api("admin").post("/api/v1/tokens/", {"name": "pager", "reason": "realtime jobs",
                                                   "user": "operator", "priority_class": "realtime"}, format="json")
    assert issued.status_code == 201, issued.content
    from rest_framework.test import APIClient

    client = APIClient()
    client.credentials(HTTP_AUTHORIZATION=f"Bearer {issued.json()['token']}")
    assert client.post("/api/v1/jobs", {**GOOD, "priority": "realtime"}, format="json").status_code == 201
