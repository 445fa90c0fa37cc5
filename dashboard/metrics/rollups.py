"""1-minute and 1-hour rollups (avg and max per metric), maintained incrementally.

Each run aggregates raw rows from a watermark up to the last completed minute (hour) and upserts the buckets, so a
rerun after a crash only redoes work. Hours are computed from raw rows too (not from minutes), so an hour's average
is exactly the average of its samples, whatever their NULLs.

Samples that arrive after their minute was rolled up (an agent replaying its buffer after a server restart, a push
delayed past the minute's end) must still be counted:

- Ingest flags, after its transaction commits, every minute a sample lands in that had already ended by then
  (`LATE_MINUTES_KEY`). A minute cannot be rolled up before it ends, so every minute that received a sample after
  its rollup is flagged. The flag goes into the pipeline ingest already sends to Redis: no extra round trip.
- A run first claims the flags (moves them to a `:claimed` set in one MULTI), then aggregates. Each aggregation
  statement reads the raw rows committed before it started, so it sees every sample whose flag it claimed: claimed
  minutes inside this run's range are covered by the range, older ones are re-aggregated on their own. The claimed
  set is deleted only after the aggregation has committed; if the database fails, the claim stays and the next run
  redoes it. Flags set meanwhile stay in the live set for the next run.
- A minute re-aggregated (or aggregated late) after its hour was rolled up flags that hour (`LATE_HOURS_KEY`);
  the hour run re-aggregates it the same way. Minute and hour runs hold one advisory lock, so a minute run reads
  the hour watermark knowing no hour run is half-way through: either the hour run saw the sample or the minute run
  sees that the hour is done and flags it.
- The minute run still redoes a short lookback (`LOOKBACK`) of recent minutes: it absorbs clock skew between the
  ingest servers (which decide a minute has ended) and the worker (which decides what to roll up).
"""

from __future__ import annotations

import logging
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from datetime import UTC, datetime, timedelta

from django.db import connection, transaction

from dashboard.metrics import fleet_rollup, partitions, schema
from dashboard.metrics.latest import LATE_HOURS_KEY, LATE_MINUTES_KEY, redis_client

log = logging.getLogger(__name__)

MINUTE = timedelta(minutes=1)
HOUR = timedelta(hours=1)
LOOKBACK = timedelta(minutes=2)
FIRST_RUN_BACKFILL = timedelta(hours=2)
CHUNK = timedelta(hours=1)  # keeps each transaction short after a long worker outage
LOCK_KEY = 0x5357_524F_4C4C_5550 & 0x7FFF_FFFF_FFFF_FFFF  # "SWROLLUP": one key for every rollup run


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
_MINUTES_WITH_FLEET = fleet_rollup.with_minute_upserts(_SQL[(schema.RAW_GPU.name, schema.GPU_1M.name)],
                                                      _SQL[(schema.RAW_NODE.name, schema.NODE_1M.name)])


def aggregate(resolution: str, lo: datetime, hi: datetime) -> None:
    """Recompute every bucket of `resolution` ("1m" or "1h") in [lo, hi) from the raw rows."""
    days = {lo.date() + timedelta(days=i) for i in range((hi - lo).days + 1)}
    partitions.ensure_days(days)
    with transaction.atomic(), connection.cursor() as cur:
        if resolution == "1m":
            # The fleet's minutes are summed from what the two upserts write, in the same statement.
            cur.execute(_MINUTES_WITH_FLEET, [lo, hi, lo, hi])
            return
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


@contextmanager
def _exclusive() -> Iterator[None]:
    """One rollup run at a time, minutes and hours alike (see the module doc). A session lock, not a transaction
    one: a run spans several transactions and its Redis claim must not be shared with another run."""
    with connection.cursor() as cur:
        cur.execute("SELECT pg_advisory_lock(%s)", [LOCK_KEY])
    try:
        yield
    finally:
        try:
            with connection.cursor() as cur:
                cur.execute("SELECT pg_advisory_unlock(%s)", [LOCK_KEY])
        except Exception:  # a broken connection has already released its session locks
            log.warning("rollups: could not release the rollup lock; closing the connection releases it")
            connection.close()


def _claimed_key(key: str) -> str:
    return f"{key}:claimed"


def _claim(key: str) -> list[datetime]:
    """Move the flags into this run's claim (merged with any claim a failed run left) and return them."""
    pipe = redis_client().pipeline(transaction=True)
    pipe.sunionstore(_claimed_key(key), [_claimed_key(key), key])
    pipe.delete(key)
    pipe.smembers(_claimed_key(key))
    members = pipe.execute()[2]
    return sorted(datetime.fromtimestamp(int(v), UTC) for v in members)


def _release(key: str) -> None:
    """The claimed flags are done: called only after their re-aggregation has committed."""
    redis_client().delete(_claimed_key(key))


def _range_starts(lo: datetime, hi: datetime, step: timedelta) -> list[datetime]:
    out = []
    while lo < hi:
        out.append(lo)
        lo += step
    return out


def _spans(starts: Iterable[datetime], step: timedelta, longest: timedelta) -> list[tuple[datetime, datetime]]:
    """Sorted bucket starts merged into [lo, hi) spans of consecutive buckets, none longer than `longest`."""
    out: list[tuple[datetime, datetime]] = []
    for start in starts:
        if out and out[-1][1] == start and out[-1][1] - out[-1][0] < longest:
            out[-1] = (out[-1][0], start + step)
        else:
            out.append((start, start + step))
    return out


def _hours_in(lo: datetime, hi: datetime) -> set[int]:
    """Starts (epoch seconds) of the hours that [lo, hi) touches."""
    out: set[int] = set()
    hour = floor_to(lo, HOUR)
    while hour < hi:
        out.add(int(hour.timestamp()))
        hour += HOUR
    return out


def rollup_minutes(now: datetime | None = None) -> int:
    """Aggregate completed minutes since the watermark, and the flagged late ones. Returns minutes processed."""
    with _exclusive():
        hi = floor_to(now or datetime.now(UTC), MINUTE)
        claimed = _claim(LATE_MINUTES_KEY)  # before any aggregation: see the module doc
        done = _watermark("1m")
        lo = (hi - FIRST_RUN_BACKFILL) if done is None else min(done, hi - LOOKBACK)
        # Claimed minutes at or after `lo` are inside this run's range, or not ended yet for this worker's clock
        # (a later range covers them: the watermark has not passed them).
        work = [(a, min(a + CHUNK, hi), True) for a in _range_starts(lo, hi, CHUNK)]
        work += [(a, b, False) for a, b in _spans((m for m in claimed if m < lo), MINUTE, CHUNK)]
        hours_done = _watermark("1h")  # constant for this run: hour runs wait for the lock
        late_hours: set[int] = set()
        count = 0
        try:
            for a, b, advances in work:
                with transaction.atomic():
                    aggregate("1m", a, b)
                    if advances:
                        _set_watermark("1m", b)
                count += int((b - a) / MINUTE)
                if hours_done is not None and a < hours_done:
                    late_hours |= _hours_in(a, min(b, hours_done))
        finally:
            # Hours of what did commit, even if a later span failed; before the minute claim is released, so a
            # crash in between redoes the minutes (and flags their hours again) rather than losing the hours.
            if late_hours:
                redis_client().sadd(LATE_HOURS_KEY, *late_hours)
        _release(LATE_MINUTES_KEY)
    return count


def rollup_hours(now: datetime | None = None) -> int:
    """Aggregate completed hours since the watermark, and the hours flagged by late minutes. Returns hours
    processed."""
    with _exclusive():
        hi = floor_to(now or datetime.now(UTC), HOUR)
        claimed = _claim(LATE_HOURS_KEY)
        done = _watermark("1h")
        lo = (hi - FIRST_RUN_BACKFILL) if done is None else done
        work = [(a, a + HOUR, True) for a in _range_starts(lo, hi, HOUR)]
        work += [(h, h + HOUR, False) for h in claimed if h < lo]  # one hour per transaction: hours are big
        count = 0
        for a, b, advances in work:
            with transaction.atomic():
                aggregate("1h", a, b)
                if advances:
                    _set_watermark("1h", b)
            count += 1
        _release(LATE_HOURS_KEY)
    return count
