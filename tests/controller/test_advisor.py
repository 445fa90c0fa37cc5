"""The advisor on the pool page: from a recorded day of a pool's 1-minute metrics it suggests a concrete deployment
revision with the numbers behind it, and links to the policy editor filled in; nothing is stored or applied."""

from __future__ import annotations

from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from typing import Any
from urllib.parse import parse_qs, urlsplit

import pytest
from django.db import connection

from control.controller import advisor
from control.policy import service as policies
from control.policy.models import PolicyRevision
from core.audit.context import Origin
from dashboard.fleet.models import Node, Pool
from dashboard.metrics import partitions

POOL = "adv"
ENTRY = {"model": "llama-70b", "params_b": 70, "tensor_parallel_size": 4, "max_model_len": 8192,
         "gpus_per_node": 8, "gpu_memory_gb": 80}
NOW = datetime.now(UTC).replace(second=0, microsecond=0)
pytestmark = pytest.mark.usefixtures("clean_samples")


def record_day(kv: Callable[[int], float], preempt_per_minute: int, nodes: int = 2) -> None:
    """A day of node_sample_1m rows for the pool's nodes: KV-cache average/max per minute from kv(minute), the
    preemption counter rising preempt_per_minute a minute."""
    pool = Pool.objects.get(name=POOL)
    ids = [Node.objects.create(name=f"{POOL}-{i}", pool=pool).pk for i in range(nodes)]
    start = NOW - timedelta(days=1)
    for day in {(start + timedelta(minutes=m)).date() for m in range(0, 1441, 60)}:
        partitions.ensure_partitions(day, 0)
    with connection.cursor() as cur:
        for m in range(1, 1441):
            for node_id in ids:
                cur.execute("INSERT INTO node_sample_1m (bucket, node_id, n, kv_cache_usage_pct_avg, "
                            "kv_cache_usage_pct_max, preemptions_total_max, requests_waiting_avg) "
                            "VALUES (%s, %s, 12, %s, %s, %s, 3)",
                            [start + timedelta(minutes=m), node_id, kv(m) - 2, kv(m), m * preempt_per_minute])


def deploy(**over: Any) -> None:
    Pool.objects.get_or_create(name=POOL)
    current = policies.active("deployment")
    policies.create_revision("deployment", {"pools": {POOL: {**ENTRY, **over}}}, "test", current.pk,
                             Origin.system("op"))


def test_kv_pressure_suggests_fp8_kv_cache_with_the_numbers() -> None:
    deploy()
    # 40 % of the day above 90 % (a 14:00 peak), one preemption a minute per node.
    record_day(lambda m: 95.0 if 480 <= m < 1056 else 50.0, 1)
    [s] = advisor.advise(POOL, NOW)
    assert s.title == "FP8 KV cache" and s.change == {"kv_cache_dtype": "fp8"}
    assert s.evidence[0] == "KV cache above 90 % in 40% of the last day's 2,880 node-minutes"
    assert s.evidence[1] == "2,878 preemptions"  # (1440 - 1) per node
    assert "double the tokens" in s.expected
    assert s.document["pools"][POOL]["kv_cache_dtype"] == "fp8"
    assert s.document["pools"][POOL]["max_model_len"] == 8192  # the rest of the entry as it is


def test_with_fp8_kv_already_it_suggests_fp8_weights() -> None:
    deploy(kv_cache_dtype="fp8")
    record_day(lambda m: 95.0 if m % 2 else 60.0, 1)
    [s] = advisor.advise(POOL, NOW)
    assert s.title == "FP8 weights" and s.change == {"quantization": "fp8"}
    assert "weights bf16, 35.0 GB per GPU" in s.evidence[2] and "free 17.5 GB per GPU" in s.expected


def test_an_idle_cache_suggests_a_longer_context_and_a_quiet_pool_nothing() -> None:
    deploy()
    record_day(lambda m: 12.0, 0)
    [s] = advisor.advise(POOL, NOW)
    assert s.change == {"max_model_len": 16384} and s.evidence[0].startswith("KV cache p95 10 %")
    Node.objects.filter(pool__name=POOL).delete()
    assert advisor.advise(POOL, NOW) == []  # no metrics, no suggestion


def test_the_pool_page_links_the_suggestion_to_the_editor_filled_in(browser: Callable[..., Any]) -> None:
    deploy()
    record_day(lambda m: 95.0 if m < 700 else 40.0, 2)
    revisions = PolicyRevision.objects.count()
    viewer = browser("viewer").get(f"/scaling/pools/{POOL}/").content.decode()
    assert "FP8 KV cache" in viewer and "open in the policy editor" not in viewer
    page = browser("operator").get(f"/scaling/pools/{POOL}/").content.decode()
    link = page.split('<a class="button" href="')[1].split('"')[0].replace("&amp;", "&")
    assert link.startswith("/policies/deployment/?")
    query = parse_qs(urlsplit(link).query)
    assert '"kv_cache_dtype": "fp8"' in query["document"][0]
    editor = browser("operator").get(link).content.decode()
    assert "&quot;kv_cache_dtype&quot;: &quot;fp8&quot;" in editor and "advisor (adv): FP8 KV cache" in editor
    # Viewers opening the link get the active document, not the suggestion; nothing was stored either way.
    assert "&quot;kv_cache_dtype&quot;: &quot;fp8&quot;" not in browser("viewer").get(link).content.decode()
    assert PolicyRevision.objects.count() == revisions
