"""The pool's deployment page: the active entry and its command line, what nodes say they run, the rollout in
progress batch by batch, the history, and revert for operators (CSRF, roles, audited, nothing done on refusal)."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import pytest

from agents.sim.background import BackgroundFleet
from control.controller.models import Rollout
from control.policy import service as policies
from core.audit.context import Origin
from core.audit.models import AuditEvent
from dashboard.fleet.models import Node, Pool
from dashboard.metrics.latest import store_latest
from tests.control.conftest import csrf_post
from tests.controller.conftest import bind_local

POOL = "ctl"
ENTRY = {"model": "sim-llm", "params_b": 8, "max_model_len": 4096, "quantization": "fp8", "gpus_per_node": 1,
         "gpu_memory_gb": 80, "strategy": {"max_unavailable": 1, "max_surge": 0}}
pytestmark = [pytest.mark.django_db, pytest.mark.usefixtures("redis_db")]


def setup(fleet: BackgroundFleet) -> tuple[Rollout, Rollout]:
    bind_local(POOL, fleet)
    pool = Pool.objects.get(name=POOL)
    for name in ("ctl-01", "ctl-02", "ctl-03"):
        Node.objects.create(name=name, pool=pool)
    store_latest("ctl-01", {"serving": {"model": "sim-llm", "tensor_parallel_size": 1, "pipeline_parallel_size": 1,
                                        "quantization": "fp8", "max_model_len": 4096, "revision": 7}})
    first = policies.active("deployment")
    v2 = policies.create_revision("deployment", {"pools": {POOL: {**ENTRY, "quantization": None}}}, "bf16",
                                  first.pk, Origin.system("op")).revision
    v3 = policies.create_revision("deployment", {"pools": {POOL: ENTRY}}, "fp8", v2.pk, Origin.system("op")).revision
    done = Rollout.objects.create(pool=pool, revision=v2, previous=first, entry=v2.document["pools"][POOL],
                                  state="failed", batches=[["ctl-01"], ["ctl-02"], ["ctl-03"]], batch=1,
                                  error="batch 2/3 failed: ctl-02", reason="bf16")
    running = Rollout.objects.create(pool=pool, revision=v3, previous=v2, entry=v3.document["pools"][POOL],
                                     batches=[["ctl-01"], ["ctl-02"], ["ctl-03"]], batch=1, step="draining",
                                     reason="fp8")
    return done, running


def test_the_page_shows_the_deployment_and_the_rollout_batch_by_batch(browser: Callable[..., Any],
                                                                      fleet: BackgroundFleet) -> None:
    done, running = setup(fleet)
    html = browser("viewer").get(f"/scaling/pools/{POOL}/").content.decode()
    assert "TP 1 × PP 1" in html and "fp8, KV cache auto" in html and "max_unavailable 1" in html
    assert "python3 -m vllm.entrypoints.openai.api_server --model sim-llm" in html
    assert "--quantization fp8" in html
    # Batch 1 done, batch 2 draining, batch 3 waiting.
    assert '<tr class="batch-done"><td>1</td><td>ctl-01</td>' in html
    assert '<tr class="batch-draining"><td>2</td><td>ctl-02</td>' in html
    assert '<tr class="batch-waiting"><td>3</td><td>ctl-03</td>' in html
    assert f'data-rollout="{done.pk}"' in html and "batch 2/3 failed: ctl-02" in html
    assert '<tr data-node="ctl-01"><td>ctl-01</td><td>active</td>' in html and "<td>7</td>" in html
    assert "revert to v" not in html  # viewers get no revert control
    operator = browser("operator").get(f"/scaling/pools/{POOL}/").content.decode()
    assert f'action="/scaling/rollouts/{done.pk}/revert/"' in operator
    assert f'action="/scaling/rollouts/{running.pk}/revert/"' not in operator  # running: nothing to revert yet
    assert browser("viewer").get("/scaling/pools/nope/").status_code == 404
    assert browser(None).get(f"/scaling/pools/{POOL}/").status_code == 302  # to the login page


def test_revert_from_the_page(browser: Callable[..., Any], fleet: BackgroundFleet) -> None:
    done, running = setup(fleet)
    Rollout.objects.filter(pk=running.pk).update(state="done")
    url = f"/scaling/rollouts/{running.pk}/revert/"
    before = (AuditEvent.objects.count(), Rollout.objects.count())
    assert csrf_post(browser("viewer"), url, {"reason": "x"}).status_code == 403
    blank = csrf_post(browser("operator"), url, {"reason": "  "})
    assert blank.status_code == 302 and (AuditEvent.objects.count(), Rollout.objects.count()) == before
    operator = browser("operator")
    ok = csrf_post(operator, url, {"reason": "fp8 hurt quality"})
    assert ok.status_code == 302 and ok["Location"] == f"/scaling/pools/{POOL}/"
    new = Rollout.objects.order_by("-id").first()
    assert new.reverts_id == running.pk and new.entry["quantization"] is None and new.actor == "operator"
    rollback = AuditEvent.objects.get(action="policy.rollback", target="policy:deployment")
    assert rollback.actor == "operator" and rollback.reason == "fp8 hurt quality"
    page = operator.get(f"/scaling/pools/{POOL}/").content.decode()
    assert f"re-applying deployment v{new.revision.version}" in page
