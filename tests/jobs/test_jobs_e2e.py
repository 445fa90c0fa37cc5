"""Jobs for real: the API enqueues, a real Celery worker runs the shards through a real HTTP upstream playing the
gateway (tests/jobs/fake_gateway.py), retries on 429 + Retry-After, merges once, and the webhook sender delivers."""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any

import pytest

from control.jobs import sharding
from control.webhooks.models import Delivery, Receiver
from tests.jobs.conftest import MAX_WAIT_S, wait_for

pytestmark = pytest.mark.django_db(transaction=True)


def job_state(api: Callable[..., Any], job_id: str) -> dict[str, Any]:
    return api("operator").get(f"/api/v1/jobs/{job_id}").json()


def wait_job(api: Callable[..., Any], job_id: str, worker: Any, timeout: float = 60) -> dict[str, Any]:
    try:
        return wait_for(lambda: (s := job_state(api, job_id))["status"] in ("done", "failed", "cancelled") and s,
                        timeout, f"job {job_id} to finish")
    except AssertionError:
        raise AssertionError(f"{job_state(api, job_id)}\n--- worker log ---\n{worker.log.read_text()[-4000:]}") from None


def hook(receiver_url: str) -> Receiver:
    # An admin-marked internal receiver may be on loopback; ad-hoc callback URLs never may (SSRF rule).
    return Receiver.objects.create(name="jobs-hook", url=f"{receiver_url}/hook", secret="s3cret-s3cret",
                                   events=["job"], internal=True, format="alertmanager")


def job_posts(receiver: Any, job_id: str) -> list[dict[str, Any]]:
    return [p for p in receiver.posts if p["headers"].get("x-switchyard-event") == "job"
            and p["json"]["switchyard"]["payload"]["id"] == job_id]


def test_a_sharded_job_runs_on_several_nodes_retries_a_429_merges_once_and_notifies(
        api: Callable[..., Any], worker: Any, gateway: Any, receiver: Any) -> None:
    fake, _ = gateway
    hook(receiver.url)
    paragraphs = [f"Paragraph {i} of the report. " + "detail " * 25 for i in range(5)]
    paragraphs[2] += " RATE-LIMIT-ONCE"
    text = "\n\n".join(p.strip() for p in paragraphs)
    callback = f"{receiver.url}/callback"
    resp = api("operator").post("/api/v1/jobs", {"model": "deepseek-r1", "input": text, "priority": "standard",
                                                 "shard": {"token_budget": 64}, "callback_url": callback},
                                format="json")
    assert resp.status_code == 201, resp.content
    job_id = resp.json()["id"]
    chunks = sharding.split(text, 64)
    assert len(chunks) == 5

    final = wait_job(api, job_id, worker)
    assert final["status"] == "done", final
    assert final["result"] == "\n\n".join(c.upper() for c in chunks)  # in input order, whatever finished first
    assert final["progress"] == {"done": 5, "total": 5, "percent": 100.0}
    shards = final["shards"]
    assert {s["status"] for s in shards} == {"done"}
    assert len({s["node"] for s in shards}) >= 2  # the gateway spread them over several nodes
    limited = shards[2]
    assert (limited["attempts"], limited["waited_s"]) == (2, 1.0)  # one 429 + Retry-After: 1, then the answer
    calls = fake.calls_for("Paragraph 2 of the report")
    assert [c.status for c in calls] == [429, 200]
    assert all(c.authorized and c.priority == "standard" for c in fake.calls_for("of the report"))

    # The `job` event reaches the subscribed receiver exactly once (one merge, one notice).
    post = wait_for(lambda: job_posts(receiver, job_id), 30, "the job webhook")[0]
    assert post["path"] == "/hook" and post["json"]["switchyard"]["payload"]["status"] == "done"
    assert post["headers"]["x-switchyard-signature"].startswith("t=")
    time.sleep(1)
    assert len(job_posts(receiver, job_id)) == 1
    # The callback was queued with the same payload; the sender refuses loopback addresses for ad-hoc URLs at
    # connect time (SSRF), which is what a callback to 127.0.0.1 must meet.
    cb = Delivery.objects.get(url=callback, event="job")
    assert cb.payload["id"] == job_id and cb.payload["status"] == "done" and cb.payload["result"] == final["result"]
    wait_for(lambda: Delivery.objects.filter(pk=cb.pk, state="failed").exists(), 30, "the callback to be refused")
    assert "loopback" in Delivery.objects.get(pk=cb.pk).last_error
    assert not [p for p in receiver.posts if p["path"] == "/callback"]


def test_cancel_stops_a_job_waiting_for_capacity(api: Callable[..., Any], worker: Any, gateway: Any,
                                                 receiver: Any) -> None:
    fake, _ = gateway
    job_id = api("operator").post("/api/v1/jobs", {"model": "m", "input": "ALWAYS-BUSY cancel me"},
                                  format="json").json()["id"]
    wait_for(lambda: fake.calls_for("cancel me"), 30, "the first gateway call")
    resp = api("operator").post(f"/api/v1/jobs/{job_id}/cancel", {"reason": "not needed"}, format="json")
    assert resp.status_code == 200, resp.content
    seen = len(fake.calls_for("cancel me"))
    time.sleep(3)  # the scheduled Celery retry (Retry-After: 1) comes due and must find the job cancelled
    assert len(fake.calls_for("cancel me")) <= seen + 1  # at most one call that was already in flight
    final = job_state(api, job_id)
    assert final["status"] == "cancelled" and final["shards"][0]["status"] == "cancelled"
    assert "not needed" in final["error"]
    assert all(c.status == 429 and c.priority == "batch" for c in fake.calls_for("cancel me"))


def test_waiting_for_capacity_is_bounded_then_the_job_fails_and_notifies(
        api: Callable[..., Any], worker: Any, gateway: Any, receiver: Any) -> None:
    fake, _ = gateway
    hook(receiver.url)
    job_id = api("operator").post("/api/v1/jobs", {"model": "m", "input": "ALWAYS-BUSY give up"},
                                  format="json").json()["id"]
    final = wait_job(api, job_id, worker)
    assert final["status"] == "failed"
    assert f"the limit is {MAX_WAIT_S} s" in final["error"] and "no capacity" in final["error"]
    # Retry-After: 1 and a 4 s budget: about five calls, not a busy loop.
    assert 3 <= len(fake.calls_for("give up")) <= MAX_WAIT_S + 2
    post = wait_for(lambda: job_posts(receiver, job_id), 30, "the failed-job webhook")[0]
    assert post["json"]["switchyard"]["payload"]["status"] == "failed"


def test_a_request_the_gateway_refuses_fails_the_job_and_its_other_shards_end_cancelled(
        api: Callable[..., Any], worker: Any, gateway: Any) -> None:
    fake, _ = gateway
    text = "BROKEN on purpose. " + "x " * 200 + "\n\nThe second part is fine. " + "y " * 200
    resp = api("operator").post("/api/v1/jobs", {"model": "m", "input": text, "shard": {"token_budget": 128}},
                                format="json")
    assert resp.status_code == 201 and resp.json()["progress"]["total"] == 2
    final = wait_job(api, resp.json()["id"], worker)
    assert final["status"] == "failed" and final["error"].startswith("shard 0: gateway answered 400")
    # The other shard either had not started (cancelled by the failure) or ran and had its answer dropped.
    wait_for(lambda: job_state(api, final["id"])["shards"][1]["status"] == "cancelled", 10, "shard 1 to end")
    assert [s["status"] for s in job_state(api, final["id"])["shards"]] == ["failed", "cancelled"]
    assert final["result"] == ""
    assert len(fake.calls_for("BROKEN on purpose")) == 1  # a refusal is not retried
