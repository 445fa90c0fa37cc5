"""Issue 13, item 13: jobs through the real gateway and a simulated fleet, not a stand-in.

A real Celery worker runs the shards of a job submitted through the API; each shard goes to the real gateway
(control.scheduler.gateway, started by tests/scheduler/conftest.py's fixture, auth required) in front of three
simulated nodes (agents/sim). The fleet starts saturated (every node's KV cache above the policy's 98 % limit), so
the gateway sheds the `batch` shards with 429 and the Retry-After of the scheduler policy; the test then frees the
nodes (fresh samples through the real ingest) and the job finishes. What the worker did is read back from what it
recorded (each shard's tries: when each call went out, its status and the Retry-After it got) and checked against
the gateway's own request log.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Callable, Iterator
from datetime import datetime
from pathlib import Path
from typing import Any

import httpx
import pytest
from django.contrib.auth import get_user_model
from django.test import override_settings

from agents.sim.background import BackgroundFleet
from control.jobs import gateway as runner
from control.jobs import sharding
from control.jobs.models import Job, Shard
from control.jobs.tasks import run_shard
from control.policy import service as policy
from control.webhooks.models import Delivery
from control.webhooks.verify import verify
from core.audit.context import Origin
from tests.jobs.conftest import HOOK_SECRET, celery_worker, hook, job_posts, wait_for, wait_job
from tests.scheduler.conftest import Fleet, fleet, gateway  # noqa: F401  (a real gateway on a real port)

pytestmark = pytest.mark.django_db(transaction=True)

SIM_MODEL = "sim-llm"
RETRY_AFTER_S = 3  # the scheduler policy's shedding.retry_after_s for these tests (the default is 2)
WORKER_MAX_WAIT_S = 120  # generous: a slow machine may shed a shard twice before the freed fleet is seen
MAX_TOKENS = 16


@pytest.fixture
def sim() -> Iterator[BackgroundFleet]:
    with BackgroundFleet(pool="pool-a", model=SIM_MODEL, gpus=1, time_scale=20.0, seed=5) as f:
        yield f


def scheduler_policy() -> None:
    """Samples are posted by the test, once per change (no agents), so they must stay fresh for the whole test;
    and a Retry-After other than the default, so the test sees the value the gateway really sent."""
    doc = policy.active("scheduler").document
    doc["filters"]["max_stale_s"] = 3600
    doc["shedding"]["retry_after_s"] = RETRY_AFTER_S
    policy.create_revision("scheduler", doc, "job e2e: samples posted by the test; a distinct Retry-After",
                           policy.active("scheduler").pk, Origin.system("setup"))


def start_fleet(fleet: Fleet, sim: BackgroundFleet, gateway: Callable[..., Any], kv: float) -> tuple[Any, list[Any]]:  # noqa: F811
    scheduler_policy()
    nodes = [sim.add_node(name=f"sim-{i}") for i in range(3)]
    for node in nodes:
        fleet.add(node.name, node.url, models=(SIM_MODEL,), kv=kv)
    gw = gateway()
    gw.wait(lambda: gw.app.sched.config.retry_after_s == RETRY_AFTER_S, what="the test's scheduler policy")
    gw.wait(lambda: all(n.name in gw.app.sched.nodes and gw.app.sched.nodes[n.name].healthy for n in nodes),
            what="3 healthy sim nodes")
    return gw, nodes


def reqlog(redis_db: Any) -> list[dict[str, str]]:
    return [{k.decode(): v.decode() for k, v in fields.items()} for _, fields in redis_db.xrange("sy:reqlog")]


def direct_answer(node_url: str, chunk: str) -> str:
    """What a simulated node answers to this shard's request, asked directly (temperature 0: deterministic)."""
    body = runner.request_body(SIM_MODEL, [{"role": "user", "content": chunk}], MAX_TOKENS, 0.0)
    resp = httpx.post(f"{node_url}/v1/chat/completions", json=body, timeout=30)
    resp.raise_for_status()
    return str(resp.json()["choices"][0]["message"]["content"])


def test_a_sharded_batch_job_through_the_real_gateway_waits_out_each_429_and_merges(
        api: Callable[..., Any], fleet: Fleet, sim: BackgroundFleet, gateway: Any,  # noqa: F811
        receiver: Any, redis_db: Any, tmp_path: Path) -> None:
    hook(receiver.url)
    gw, nodes = start_fleet(fleet, sim, gateway, kv=99.0)  # every KV cache above 98 %: saturated
    assert gw.eligible() == set()
    # The gateway checks who calls: an anonymous request is refused, the runner's internal token is not.
    anonymous = httpx.post(f"{gw.url}/v1/chat/completions", json={"model": SIM_MODEL, "messages": [
        {"role": "user", "content": "hi"}]}, timeout=30)
    assert anonymous.status_code == 401

    paragraphs = [f"Paragraph {i} of the incident report. " + "detail " * 25 for i in range(3)]
    text = "\n\n".join(p.strip() for p in paragraphs)
    chunks = sharding.split(text, 64)
    assert len(chunks) == 3
    callback = f"{receiver.url}/callback"
    with celery_worker(gw.url, tmp_path / "worker.log", max_wait_s=WORKER_MAX_WAIT_S) as worker:
        resp = api("operator").post("/api/v1/jobs", {
            "model": SIM_MODEL, "input": text, "priority": "batch", "max_tokens": MAX_TOKENS, "temperature": 0,
            "shard": {"token_budget": 64}, "callback_url": callback}, format="json")
        assert resp.status_code == 201, resp.content
        job_id = resp.json()["id"]

        # Every shard is shed (429) and waits; then the nodes drain and report room again.
        def all_waiting() -> bool:
            job = Job.objects.get(pk=job_id)
            assert not job.terminal, f"the job ended before it was shed: {job.status}: {job.error}"
            return set(job.shards.values_list("status", flat=True)) == {"waiting"}

        wait_for(all_waiting, 60, "every shard to be shed and waiting")
        for node in nodes:
            fleet.sample(node.name, kv=10.0)
        final = wait_job(api, job_id, worker, timeout=120)

    assert final["status"] == "done", final
    assert final["progress"] == {"done": 3, "total": 3, "percent": 100.0}
    # The simulated model's answers, merged in input order whatever finished first.
    assert final["result"] == "\n\n".join(direct_answer(nodes[0].url, c) for c in chunks)

    names = {n.name for n in nodes}
    shed = 0
    for shard in final["shards"]:
        tries = shard["tries"]
        assert shard["status"] == "done" and shard["node"] in names, shard
        assert shard["attempts"] == len(tries) >= 2, shard
        *waits, last = tries
        assert [t["status"] for t in waits] == [429] * len(waits), tries
        assert [t["retry_after"] for t in waits] == [RETRY_AFTER_S] * len(waits), tries
        assert (last["status"], last["node"], last["retry_after"]) == (200, shard["node"], None), tries
        # The runner honoured each Retry-After: no try went out sooner than the gateway said.
        for before, after in zip(tries, tries[1:], strict=False):
            gap = (datetime.fromisoformat(after["at"]) - datetime.fromisoformat(before["at"])).total_seconds()
            assert gap >= before["retry_after"], (gap, tries)
        assert shard["waited_s"] == RETRY_AFTER_S * len(waits)
        shed += len(waits)

    # The gateway's own request log agrees: the job's calls were class batch, each 429 the runner recorded was one
    # the gateway sent, and the nodes the shards name are the ones that answered.
    def logged() -> list[dict[str, str]]:
        entries = [e for e in reqlog(redis_db) if e["model"] == SIM_MODEL]
        return entries if sum(e["status"] == "200" for e in entries) == 3 else []

    entries = wait_for(logged, 30, "the gateway's request log")
    assert {e["class"] for e in entries} == {"batch"}
    assert sum(e["status"] == "429" for e in entries) == shed
    assert Counter(e["node"] for e in entries if e["status"] == "200") == Counter(s["node"] for s in final["shards"])

    # One `job` event for the subscribed receiver, signed with its secret; the callback to a loopback address is
    # refused by the sender when it connects (an ad-hoc URL is never internal).
    post = wait_for(lambda: job_posts(receiver, job_id), 30, "the job webhook")[0]
    assert post["json"]["switchyard"]["payload"]["status"] == "done"
    verify(HOOK_SECRET, post["headers"]["x-switchyard-signature"], post["raw"])
    cb = Delivery.objects.get(url=callback, event="job")
    wait_for(lambda: Delivery.objects.filter(pk=cb.pk, state="failed").exists(), 30, "the callback to be refused")
    assert "loopback" in Delivery.objects.get(pk=cb.pk).last_error
    assert not [p for p in receiver.posts if p["path"] == "/callback"]
    assert len(job_posts(receiver, job_id)) == 1


def test_a_runner_without_the_gateways_internal_token_is_refused_and_its_job_fails_at_once(
        tokens: dict[str, str], fleet: Fleet, sim: BackgroundFleet, gateway: Any) -> None:  # noqa: F811
    gw, _ = start_fleet(fleet, sim, gateway, kv=10.0)
    owner = get_user_model().objects.get(username="operator")

    def run(secret_key: str | None) -> Job:
        job = Job.objects.create(owner=owner, model=SIM_MODEL, input="hello", priority="batch", max_tokens=4,
                                 temperature=0.0)
        shard = Shard.objects.create(job=job, index=0, input="hello")
        overrides: dict[str, Any] = {"GATEWAY_URL": gw.url}
        if secret_key is not None:
            overrides["SECRET_KEY"] = secret_key  # a runner configured with another key derives another token
        with override_settings(**overrides):
            run_shard.apply(args=[shard.pk])  # the task body, in this process (no retry is involved)
        job.refresh_from_db()
        return job

    refused = run("not-the-key-the-gateway-was-started-with-" + "x" * 20)
    assert refused.status == "failed"
    assert refused.error.startswith("shard 0: gateway answered 401") and "unknown or revoked API key" in refused.error
    [tried] = Shard.objects.get(job=refused).tries
    assert tried["status"] == 401 and tried["retry_after"] is None  # refused once, not retried

    served = run(None)  # the same gateway and path with the key it shares: served
    assert served.status == "done" and served.result
    assert Shard.objects.get(job=served).node.startswith("sim-")
