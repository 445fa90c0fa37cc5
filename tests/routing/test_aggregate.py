"""control.routing.tasks.aggregate: every log entry counted exactly once, even across a crash and two workers."""

from __future__ import annotations

import time
from datetime import UTC, datetime
from typing import Any

import psycopg
import pytest
from django.db.models import Sum

from control.routing import aggregate, histogram, reqlog, tasks
from control.routing.models import RequestMinute, StreamCursor
from tests.conftest import database_url_for_subprocess
from tests.routing.conftest import entry, xadd

pytestmark = pytest.mark.django_db(transaction=True)


def minute_of(ts: float) -> datetime:
    return datetime.fromtimestamp(int(ts // 60 * 60), UTC)


def fill(stream: Any, base: float) -> list[float]:
    """Two minutes of traffic on two nodes, two classes, with 429s, 5xx, retries and cache hits."""
    latencies = []
    for i in range(60):
        ts = base + i  # base is the start of a minute: 60 entries in that minute
        lat = 50.0 + 10 * i
        latencies.append(lat)
        xadd(stream, entry(ts=ts, node="gpu-a-1" if i % 3 else "gpu-a-2", cls="standard" if i % 2 else "batch",
                           status=200 if i % 10 else 503, latency_ms=lat, ttft_ms=lat / 5,
                           cache="hit" if i % 4 == 0 else "miss", retries=1 if i % 7 == 0 else 0))
    for i in range(5):
        xadd(stream, entry(ts=base + 60 + i, node="", pool="", cls="batch", status=429, latency_ms=1.0,
                           ttft_ms=None, cache="off", prompt=0, completion=0))
    return latencies


def totals() -> dict[str, Any]:
    return RequestMinute.objects.aggregate(requests=Sum("requests"), s2=Sum("status_2xx"), s5=Sum("status_5xx"),
                                           s429=Sum("status_429"), retries=Sum("retries"), hits=Sum("cache_hits"),
                                           misses=Sum("cache_misses"), completion=Sum("completion_tokens"))


def test_aggregate_counts_each_entry_once_across_runs(stream: Any) -> None:
    base = (time.time() // 60 - 3) * 60
    fill(stream, base)
    first = tasks.aggregate()
    assert first["processed"] == 65
    again = tasks.aggregate()  # nothing new: nothing added
    assert again["processed"] == 0
    t = totals()
    assert t == {"requests": 65, "s2": 54, "s5": 6, "s429": 5, "retries": 9, "hits": 15, "misses": 45,
                 "completion": 60 * 20}
    # Rows per (minute, node, pool, class): the 429s (no node) have their own row in the next minute.
    shed = RequestMinute.objects.get(minute=minute_of(base + 60), node="", request_class="batch")
    assert (shed.requests, shed.status_429, sum(shed.ttft_buckets)) == (5, 5, 0)
    # New entries after the cursor are added to the same minute rows, not double counted.
    xadd(stream, entry(ts=base + 61, node="", pool="", cls="batch", status=429, latency_ms=1.0, ttft_ms=None))
    assert tasks.aggregate()["processed"] == 1
    shed.refresh_from_db()
    assert shed.requests == 6
    assert StreamCursor.objects.get(stream=reqlog.STREAM).processed == 66


def test_a_crash_between_upsert_and_commit_leaves_nothing_and_the_rerun_counts_once(
        stream: Any, monkeypatch: pytest.MonkeyPatch) -> None:
    base = (time.time() // 60 - 3) * 60
    fill(stream, base)

    def crash() -> None:
        raise RuntimeError("worker killed after the upsert")

    monkeypatch.setattr(aggregate, "after_upsert", crash)
    with pytest.raises(RuntimeError):
        tasks.aggregate()
    # The upsert ran but rolled back with the cursor: no rows, cursor where it was, entries still in the stream.
    assert RequestMinute.objects.count() == 0
    assert StreamCursor.objects.filter(stream=reqlog.STREAM, last_id="0-0").count() <= 1
    assert not StreamCursor.objects.exclude(last_id="0-0").exists()
    assert stream.xlen(reqlog.STREAM) == 65
    monkeypatch.undo()
    assert tasks.aggregate()["processed"] == 65
    assert totals()["requests"] == 65
    assert tasks.aggregate()["processed"] == 0
    assert totals()["requests"] == 65


def test_a_second_worker_holding_the_lock_makes_this_run_skip(stream: Any) -> None:
    fill(stream, (time.time() // 60 - 3) * 60)
    with psycopg.connect(database_url_for_subprocess(), autocommit=False) as other:
        other.execute("SELECT pg_advisory_xact_lock(%s)", [aggregate.LOCK_KEY])
        result = aggregate.run()
        assert result.locked_out and result.processed == 0
        assert RequestMinute.objects.count() == 0
    assert aggregate.run().processed == 65


def test_minute_histograms_merge_to_the_percentiles_of_all_requests(stream: Any) -> None:
    base = (time.time() // 60 - 3) * 60
    latencies = fill(stream, base)
    tasks.aggregate()
    rows = RequestMinute.objects.filter(minute=minute_of(base))
    assert rows.count() == 4  # 2 nodes x 2 classes
    merged = histogram.merge(r.latency_buckets for r in rows)
    assert merged == histogram.of(latencies)
    assert sum(r.latency_ms_sum for r in rows) == pytest.approx(sum(latencies))


def test_malformed_entries_are_skipped_and_counted(stream: Any) -> None:
    now = time.time()
    xadd(stream, entry(ts=now))
    stream.xadd(reqlog.STREAM, {"ts": str(now), "status": "not-a-number"})
    stream.xadd(reqlog.STREAM, {"ts": str(now), "latency_ms": "-5", "status": "200"})
    xadd(stream, entry(ts=now))
    result = tasks.aggregate()
    assert (result["processed"], result["skipped"]) == (2, 2)
    assert StreamCursor.objects.get(stream=reqlog.STREAM).skipped == 2
    assert totals()["requests"] == 2


def test_trim_removes_only_processed_entries_older_than_the_live_window(stream: Any) -> None:
    old = time.time() - 3600
    for i in range(300):
        stream.xadd(reqlog.STREAM, entry(ts=old + i), id=f"{int((old + i) * 1000)}-0")
    tasks.aggregate()
    recent = [stream.xadd(reqlog.STREAM, entry()) for _ in range(3)]
    # Trimming is approximate (whole stream nodes), so check the bounds, not an exact length: old processed
    # entries may go, the recent ones (inside the window) stay.
    tasks.aggregate()
    ids = [eid for eid, _ in stream.xrange(reqlog.STREAM)]
    assert all(r in ids for r in recent)
    assert len(ids) < 303


def test_nothing_unprocessed_is_trimmed_even_when_old(stream: Any, monkeypatch: pytest.MonkeyPatch) -> None:
    old = time.time() - 3600
    for i in range(300):
        stream.xadd(reqlog.STREAM, entry(ts=old + i), id=f"{int((old + i) * 1000)}-0")

    def crash() -> None:
        raise RuntimeError("crash")

    monkeypatch.setattr(aggregate, "after_upsert", crash)
    with pytest.raises(RuntimeError):
        tasks.aggregate()
    assert stream.xlen(reqlog.STREAM) == 300  # an hour old, but never counted: kept
    monkeypatch.undo()
    assert tasks.aggregate()["processed"] == 300
    assert stream.xlen(reqlog.STREAM) < 300  # counted and outside the live window: trimmed
    assert totals()["requests"] == 300
