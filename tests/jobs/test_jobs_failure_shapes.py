"""Job failure shapes a real gateway cannot be made to produce on demand, one prompt at a time: a real Celery worker
runs the shards through tests/jobs/fake_gateway.py, which always sheds (`ALWAYS-BUSY`) or refuses (`BROKEN`) a
request by a marker in its prompt. The happy path, sharding and an honoured Retry-After run through the real gateway
and a simulated fleet in tests/jobs/test_jobs_gateway_e2e.py.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any

import pytest

from tests.jobs.conftest import MAX_WAIT_S, hook, job_posts, job_state, wait_for, wait_job

pytestmark = pytest.mark.django_db(transaction=True)


def test_cancel_stops_a_job_waiting_for_capacity(api: Callable[..., Any], worker: Any, fake_gateway: Any,
                                                 receiver: Any) -> None:
    fake, _ = fake_gateway
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
        api: Callable[..., Any], worker: Any, fake_gateway: Any, receiver: Any) -> None:
    fake, _ = fake_gateway
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
        api: Callable[..., Any], worker: Any, fake_gateway: Any) -> None:
    fake, _ = fake_gateway
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
