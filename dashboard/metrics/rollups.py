"""1-minute and 1-hour rollups (avg and max per metric), maintained incrementally.

Each run aggregates raw rows from a watermark up to the last completed minute (hour) and upserts the buckets, so a
rerun after a crash only redoes work. Minutes are re-aggregated for a short lookback to absorb samples that arrive a
little late; samples replayed much later (an agent back from an outage) are flagged by ingest in a Redis set of
"late" minutes, which the next run re-aggregates. Hours are computed from raw rows too (not from minutes), so an
hour's average is exactly the average of its samples, whatever their NULLs.
"""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

from django.db import connection, transaction

from dashboard.metrics import partitions, schema
from dashboard.metrics.latest import LATE_HOURS_KEY, LATE_MINUTES_KEY, redis_client

LOOKBACK = timedelta(minutes=2)
FIRST_RUN_BACKFILL = timedelta(hours=2)


def floor_to(ts: datetime, step: timedelta) -> datetime:
    epoch = ts.timestamp()
    return datetime.fromtimestamp(epoch - epoch % step.total_seconds(), UTC)


def _upsert_sql(src: schema.Table, dst: schema.Table) -> str:
    trunc = "minute" if dst.resolution == "1m" else "hour"
    keys = ", ".join(dst.key_cols)
    cols = ", ".join(f"{m.name}_avg, {m.name}_max" for m in dst.metrics)
    aggs = ", ".join(f"avg({m.name}), max({m.name})" for m in src.metrics)
    updates = ", ".join(
        ["n = EXCLUDED.n"] + [f"{c} = EXCLUDED.{c}" for m in dst.metrics for c in (f"{m.name}_avg", f"{m.name}_max")]
    )
    return (
        f"INSERT INTO {dst.name} (bucket, {keys}, n, {cols}) "
        f"SELECT date_trunc('{trunc}', ts) AS bucket, {keys}, count(*), {aggs} FROM {src.name} "
        f"WHERE ts >= %s AND ts < %s GROUP BY bucket, {keys} "
        f"ON CONFLICT ({keys}, bucket) DO UPDATE SET {updates}"
    )


_SQL = {
    (src.name, dst.name): _upsert_sql(src, dst)
    for src, dst in (
        (schema.RAW_GPU, schema.GPU_1M),
        (schema.RAW_NODE, schema.NODE_1M),
        (schema.RAW_GPU, schema.GPU_1H),
        (schema.RAW_NODE, schema.NODE_1H),
    )
}


def aggregate(resolution: str, lo: datetime, hi: datetime) -> None:
    """Recompute every bucket of `resolution` ("1m" or "1h") in [lo, hi) from the raw rows."""
    days = {lo.date() + timedelta(days=i) for i in range((hi - lo).days + 1)}
    partitions.ensure_days(days)
    with transaction.atomic(), connection.cursor() as cur:
        for kind in ("gpu", "node"):
            src = schema.RAW_GPU if kind == "gpu" else schema.RAW_NODE
            cur.execute(_SQL[(src.name, schema.ROLLUPS[(kind, resolution)].name)], [lo, hi])


def _watermark(name: str) -> datetime | None:
    with connection.cursor() as cur:
        cur.execute("SELECT done_until FROM metrics_rollup_state WHERE name = %s", [name])
        row = cur.fetchone()
    return row[0] if row else None


def _set_watermark(name: str, value: datetime) -> None:
    with connection.cursor() as cur:
        cur.execute(
            "INSERT INTO metrics_rollup_state (name, done_until) VALUES (%s, %s) "
            "ON CONFLICT (name) DO UPDATE SET done_until = EXCLUDED.done_until",
            [name, value],
        )


def _pop_all(key: str) -> list[datetime]:
    r = redis_client()
    values = r.spop(key, 10_000) or []
    return sorted(datetime.fromtimestamp(int(v), UTC) for v in values)


def rollup_minutes(now: datetime | None = None) -> int:
    """Aggregate completed minutes since the watermark (and flagged late ones). Returns minutes processed."""
    step = timedelta(minutes=1)
    hi = floor_to(now or datetime.now(UTC), step)
    done = _watermark("1m")
    lo = (hi - FIRST_RUN_BACKFILL) if done is None else min(done, hi - LOOKBACK)
    count = 0
    chunk = timedelta(hours=1)  # keeps each transaction short after a long worker outage
    while lo < hi:
        upper = min(lo + chunk, hi)
        aggregate("1m", lo, upper)
        count += int((upper - lo) / step)
        lo = upper
        _set_watermark("1m", upper)
    hours_done = _watermark("1h")
    for minute in _pop_all(LATE_MINUTES_KEY):
        aggregate("1m", minute, minute + step)
        count += 1
        if hours_done is not None and minute < hours_done:
            redis_client().sadd(LATE_HOURS_KEY, int(floor_to(minute, timedelta(hours=1)).timestamp()))
    return count


def rollup_hours(now: datetime | None = None) -> int:
    """Aggregate completed hours since the watermark (and hours touched by late samples). Returns hours processed."""
    step = timedelta(hours=1)
    hi = floor_to(now or datetime.now(UTC), step)
    done = _watermark("1h")
    lo = (hi - FIRST_RUN_BACKFILL) if done is None else done
    count = 0
    while lo < hi:
        aggregate("1h", lo, lo + step)
        lo += step
        count += 1
        _set_watermark("1h", lo)
    for hour in _pop_all(LATE_HOURS_KEY):
        aggregate("1h", hour, hour + step)
        count += 1
    return count
