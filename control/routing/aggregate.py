"""Fold the gateway's request log into per-minute rows, exactly once.

One transaction per batch: take a PostgreSQL advisory lock (so two workers never read the same entries), read the
cursor row, XRANGE the entries after it, upsert the minute rows, move the cursor. If anything fails before the
commit, neither the rows nor the cursor change and the next run reads the same entries again. Only entries the
cursor has passed (and that are older than the live window the summary reads) are trimmed from the stream.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta

from django.conf import settings
from django.db import connection, transaction

from control.canary import minutes as arm_minutes
from control.routing import histogram, reqlog
from control.routing.models import RequestMinute, RequestTotal, StreamCursor
from control.routing.upsert import additive_upsert
from dashboard.metrics.latest import redis_client

log = logging.getLogger(__name__)

BATCH = 5000
MAX_BATCHES = 40  # per run: 200k entries, the stream's MAXLEN; the next beat tick goes on from the cursor
LOCK_KEY = 0x5359_5251  # "SYRQ": the advisory lock id of this aggregator
KEEP_LIVE_S = 900  # the summary API reads the last 15 minutes from the stream itself


@dataclass
class Bucket:
    requests: int = 0
    status: dict[str, int] = field(default_factory=lambda: {"2xx": 0, "4xx": 0, "429": 0, "5xx": 0})
    retries: int = 0
    cache_hits: int = 0
    cache_misses: int = 0
    prompt_tokens: int = 0
    completion_tokens: int = 0
    latency_ms_sum: float = 0.0
    latency: list[int] = field(default_factory=histogram.empty)
    ttft: list[int] = field(default_factory=histogram.empty)

    def add(self, e: reqlog.Entry) -> None:
        self.requests += 1
        cls = reqlog.status_class(e.status)
        if cls in self.status:
            self.status[cls] += 1
        self.retries += e.retries
        self.cache_hits += e.cache == "hit"
        self.cache_misses += e.cache == "miss"
        self.prompt_tokens += e.prompt_tokens
        self.completion_tokens += e.completion_tokens
        if e.latency_ms is not None:
            self.latency_ms_sum += e.latency_ms
            histogram.add(self.latency, e.latency_ms)
        if e.ttft_ms is not None:
            histogram.add(self.ttft, e.ttft_ms)


@dataclass
class RunResult:
    processed: int = 0
    skipped: int = 0
    rows: int = 0
    batches: int = 0
    locked_out: bool = False
    last_id: str = "0-0"


def after_upsert() -> None:
    """Called between the upsert and the cursor update (inside the transaction); tests make it raise (a crash)."""


_UPSERT = additive_upsert(
    RequestMinute._meta.db_table, ("minute", "node", "pool", "request_class"),
    ("requests", "status_2xx", "status_4xx", "status_429", "status_5xx", "retries", "cache_hits", "cache_misses",
     "prompt_tokens", "completion_tokens", "latency_ms_sum"), ("latency_buckets", "ttft_buckets"))


_UPSERT_TOTAL = additive_upsert(RequestTotal._meta.db_table, ("minute",),
                                ("requests", "status_429", "status_5xx", "completion_tokens"))


def totals(buckets: dict[tuple[int, str, str, str], Bucket]) -> list[tuple[datetime, int, int, int, int]]:
    """The batch's buckets summed per minute (the RequestTotal rows to add), in minute order."""
    out: dict[int, list[int]] = {}
    for (minute, _node, _pool, _cls), b in buckets.items():
        t = out.setdefault(minute, [0, 0, 0, 0])
        t[0] += b.requests
        t[1] += b.status["429"]
        t[2] += b.status["5xx"]
        t[3] += b.completion_tokens
    return [(datetime.fromtimestamp(m, UTC), *t) for m, t in sorted(out.items())]  # type: ignore[misc]


def fold(entries: list[reqlog.Entry]) -> dict[tuple[int, str, str, str], Bucket]:
    out: dict[tuple[int, str, str, str], Bucket] = {}
    for e in entries:
        key = (e.minute, e.node, e.pool, e.request_class)
        out.setdefault(key, Bucket()).add(e)
    return out


def _batch(result: RunResult) -> bool:
    """Aggregate one batch in one transaction; False when there was nothing (more) to do or the lock is held."""
    with transaction.atomic():
        with connection.cursor() as cur:
            cur.execute("SELECT pg_try_advisory_xact_lock(%s)", [LOCK_KEY])
            if not cur.fetchone()[0]:
                result.locked_out = True
                return False
        cursor, _ = StreamCursor.objects.select_for_update().get_or_create(stream=reqlog.STREAM)
        raw = redis_client().xrange(reqlog.STREAM, min=f"({cursor.last_id}", count=BATCH)
        result.last_id = cursor.last_id
        if not raw:
            return False
        if cursor.last_id != "0-0" and _lost_after(cursor.last_id):
            log.warning("request log: entries after %s were trimmed before aggregation (the gateway's MAXLEN is "
                        "too small for this rate, or aggregation stopped for long)", cursor.last_id)
        entries: list[reqlog.Entry] = []
        skipped = 0
        for eid, fields in raw:
            try:
                entries.append(reqlog.parse(eid, fields))
            except (ValueError, OverflowError) as exc:
                skipped += 1
                log.warning("request log entry %s skipped: %s", eid.decode(), exc)
        buckets = fold(entries)
        params = [
            (datetime.fromtimestamp(minute, UTC), node, pool, cls, b.requests, b.status["2xx"], b.status["4xx"],
             b.status["429"], b.status["5xx"], b.retries, b.cache_hits, b.cache_misses, b.prompt_tokens,
             b.completion_tokens, b.latency_ms_sum, b.latency, b.ttft)
            for (minute, node, pool, cls), b in sorted(buckets.items())  # sorted: a fixed lock order on rows
        ]
        with connection.cursor() as cur:
            cur.executemany(_UPSERT, params)
            cur.executemany(_UPSERT_TOTAL, totals(buckets))
        arm_minutes.fold(entries)  # a running canary's minutes, per arm, in the same transaction
        after_upsert()
        cursor.last_id = raw[-1][0].decode()
        cursor.processed += len(entries)
        cursor.skipped += skipped
        cursor.save()
        result.processed += len(entries)
        result.skipped += skipped
        result.rows += len(params)
        result.batches += 1
        result.last_id = cursor.last_id
        return len(raw) == BATCH


def _lost_after(last_id: str) -> bool:
    # Our own trim keeps the cursor's entry, so a stream that starts past it was trimmed by someone else (MAXLEN)
    # and may have dropped entries we never saw.
    head = redis_client().xinfo_stream(reqlog.STREAM).get("first-entry")
    return head is not None and reqlog.id_key(head[0].decode()) > reqlog.id_key(last_id)


def run() -> RunResult:
    """Aggregate everything new (up to MAX_BATCHES batches), then trim what is both processed and out of the window."""
    result = RunResult()
    for _ in range(MAX_BATCHES):
        if not _batch(result):
            break
    if result.batches:
        _trim(result.last_id)
        _retention()
    return result


def _trim(last_id: str) -> None:
    # Never past the cursor (unprocessed entries stay), never inside the live window the summary reads.
    keep_from = reqlog.stream_id_at(time.time() - KEEP_LIVE_S)
    bound = min(keep_from, last_id, key=reqlog.id_key)  # MINID keeps ids >= bound, the cursor's entry included
    redis_client().xtrim(reqlog.STREAM, minid=bound, approximate=True)


def _retention() -> None:
    days = getattr(settings, "RETENTION_1M_DAYS", 90)
    cutoff = datetime.now(UTC) - timedelta(days=days)
    RequestMinute.objects.filter(minute__lt=cutoff).delete()
    RequestTotal.objects.filter(minute__lt=cutoff).delete()
