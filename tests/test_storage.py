"""Partitions ahead, rollups that equal the raw data, retention that drops only old partitions."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from django.db import connection

from dashboard.metrics import partitions, rollups, schema
from dashboard.metrics.latest import LATE_MINUTES_KEY
from tests.conftest import full_sample, make_node

pytestmark = pytest.mark.usefixtures("clean_samples")


def partition_names(table: schema.Table) -> set[str]:
    return {name for name, _lo, _hi in partitions.list_partitions(table)}


def test_partitions_are_created_ahead(settings: Any) -> None:
    settings.PARTITIONS_AHEAD_DAYS = 5
    today = datetime.now(UTC).date()
    partitions.ensure_partitions()
    for offset in range(6):
        day = today + timedelta(days=offset)
        assert f"gpu_sample_p{day:%Y%m%d}" in partition_names(schema.RAW_GPU)
        assert f"node_sample_1m_p{day:%Y%m%d}" in partition_names(schema.NODE_1M)
    assert f"gpu_sample_1h_p{today:%Y%m}" in partition_names(schema.GPU_1H)
    # Idempotent: a second run neither fails nor duplicates.
    before = partition_names(schema.RAW_GPU)
    partitions.ensure_partitions()
    assert partition_names(schema.RAW_GPU) == before


def test_ingest_creates_a_missing_partition_for_its_day(push: Any) -> None:
    token = make_node()
    yesterday = datetime.now(UTC) - timedelta(days=2)
    name = f"gpu_sample_p{yesterday:%Y%m%d}"
    with connection.cursor() as cur:
        cur.execute(f"DROP TABLE IF EXISTS {name}, node_sample_p{yesterday:%Y%m%d}")
    partitions._known_days.clear()
    resp = push(token, {"node": "gpu-a-1", "samples": [full_sample(1, yesterday)]})
    assert resp.status_code == 200, resp.content
    assert name in partition_names(schema.RAW_GPU)


def seed_minutes(push: Any, start: datetime, minutes: int) -> dict[str, str]:
    """Five samples per minute for two nodes, values varying so avg != max, some NULLs. Returns their tokens."""
    tokens = {"gpu-a-1": make_node("gpu-a-1"), "gpu-a-2": make_node("gpu-a-2")}
    seq = 0
    for name, token in tokens.items():
        samples = []
        for i in range(minutes * 5):
            seq += 1
            s = full_sample(seq, start + timedelta(seconds=12 * i), gpus=2, base=(i * 7 + seq) % 90)
            if i % 4 == 0:
                s["gpus"][0]["gpu_util_pct"] = None
            samples.append(s)
        for chunk in range(0, len(samples), 100):
            resp = push(token, {"node": name, "samples": samples[chunk:chunk + 100]})
            assert resp.status_code == 200, resp.content
    return tokens


def direct(sql: str, *params: Any) -> list[tuple[Any, ...]]:
    with connection.cursor() as cur:
        cur.execute(sql, params)
        return cur.fetchall()


def test_rollups_equal_a_direct_aggregate_over_raw_rows(push: Any) -> None:
    now = datetime.now(UTC)
    start = rollups.floor_to(now - timedelta(hours=2), timedelta(hours=1))
    seed_minutes(push, start, 70)
    rollups.rollup_minutes(now)
    rollups.rollup_hours(now)

    for metric in ("gpu_util_pct", "power_w", "energy_j"):
        expected = direct(
            f"SELECT date_trunc('minute', ts), node_id, gpu, count(*), avg({metric}), max({metric}) "
            "FROM gpu_sample GROUP BY 1, 2, 3 ORDER BY 1, 2, 3")
        got = direct(f"SELECT bucket, node_id, gpu, n, {metric}_avg, {metric}_max FROM gpu_sample_1m "
                     "ORDER BY 1, 2, 3")
        assert len(got) == len(expected) == 70 * 2 * 2
        for e, g in zip(expected, got, strict=True):
            assert g[:4] == e[:4]
            assert g[4] == pytest.approx(e[4], rel=1e-9, abs=1e-9)
            assert g[5] == pytest.approx(e[5], rel=1e-6)
        hourly_expected = direct(
            f"SELECT date_trunc('hour', ts), node_id, gpu, avg({metric}), max({metric}) FROM gpu_sample "
            "WHERE ts < %s GROUP BY 1, 2, 3 ORDER BY 1, 2, 3", rollups.floor_to(now, timedelta(hours=1)))
        hourly = direct(f"SELECT bucket, node_id, gpu, {metric}_avg, {metric}_max FROM gpu_sample_1h ORDER BY 1, 2, 3")
        assert [h[:3] for h in hourly] == [e[:3] for e in hourly_expected] and hourly
        for e, g in zip(hourly_expected, hourly, strict=True):
            assert g[3] == pytest.approx(e[3], rel=1e-9) and g[4] == pytest.approx(e[4], rel=1e-6)

    node_expected = direct("SELECT date_trunc('minute', ts), node_id, avg(cpu_util_pct), max(queue_time_p95_s) "
                           "FROM node_sample GROUP BY 1, 2 ORDER BY 1, 2")
    node_got = direct("SELECT bucket, node_id, cpu_util_pct_avg, queue_time_p95_s_max FROM node_sample_1m "
                      "ORDER BY 1, 2")
    assert [g[:2] for g in node_got] == [e[:2] for e in node_expected]
    assert all(g[2] == pytest.approx(e[2]) and g[3] == pytest.approx(e[3]) for e, g in zip(node_expected, node_got, strict=True))


def test_rollups_are_incremental_and_pick_up_late_samples(push: Any, redis_db: Any) -> None:
    now = datetime.now(UTC)
    start = rollups.floor_to(now - timedelta(minutes=30), timedelta(minutes=1))
    seed_minutes(push, start, 10)
    rollups.rollup_minutes(now)
    first = direct("SELECT count(*) FROM gpu_sample_1m")[0][0]
    assert first == 10 * 2 * 2
    # A second run with nothing new redoes only the short lookback and changes nothing.
    rollups.rollup_minutes(now + timedelta(seconds=30))
    assert direct("SELECT count(*) FROM gpu_sample_1m")[0][0] == first

    # An agent back from an outage replays a sample into a minute that was already rolled up.
    token_late = make_node("gpu-late")
    late_ts = start + timedelta(minutes=2, seconds=30)
    sample = full_sample(1, late_ts, gpus=1, base=99)
    assert push(token_late, {"node": "gpu-late", "samples": [sample]}).status_code == 200
    assert redis_db.scard(LATE_MINUTES_KEY) == 1
    rollups.rollup_minutes(now + timedelta(seconds=40))
    row = direct("SELECT n, gpu_util_pct_max FROM gpu_sample_1m b JOIN fleet_node n ON n.id = b.node_id "
                 "WHERE n.name = 'gpu-late'")
    assert row == [(1, pytest.approx(sample["gpus"][0]["gpu_util_pct"]))]


def assert_rollup_matches_raw(resolution: str, lo: datetime, hi: datetime) -> None:
    """Every bucket of `resolution` in [lo, hi) holds exactly what a direct aggregate of the raw rows gives."""
    trunc = "minute" if resolution == "1m" else "hour"
    for raw, keys in (("gpu_sample", "node_id, gpu"), ("node_sample", "node_id")):
        metric = "gpu_util_pct" if raw == "gpu_sample" else "cpu_util_pct"
        expected = direct(f"SELECT date_trunc('{trunc}', ts), {keys}, count(*), avg({metric}), max({metric}) "
                          f"FROM {raw} WHERE ts >= %s AND ts < %s GROUP BY 1, {keys} ORDER BY 1, {keys}", lo, hi)
        got = direct(f"SELECT bucket, {keys}, n, {metric}_avg, {metric}_max FROM {raw}_{resolution} "
                     f"WHERE bucket >= %s AND bucket < %s ORDER BY 1, {keys}", lo, hi)
        width = len(keys.split(",")) + 2  # bucket, keys, n
        assert [g[:width] for g in got] == [e[:width] for e in expected], f"{raw}_{resolution} counts differ"
        for e, g in zip(expected, got, strict=True):
            assert g[width] == pytest.approx(e[width]) and g[width + 1] == pytest.approx(e[width + 1])


def seed_recent(push: Any) -> tuple[datetime, str]:
    """Two nodes reporting every 12 s for the last 35 minutes (up to 2 minutes ago), rolled up as the beat task
    would have; returns the time of that rollup run and gpu-a-1's token."""
    t0 = datetime.now(UTC)
    tokens = seed_minutes(push, rollups.floor_to(t0 - timedelta(minutes=35), timedelta(minutes=1)), 33)
    t0 = datetime.now(UTC)
    rollups.rollup_minutes(t0)
    return t0, tokens["gpu-a-1"]


def push_late(push: Any, token: str, ts: datetime) -> None:
    """gpu-a-1's agent replays a buffered sample (an outage or a server restart delayed it)."""
    resp = push(token, {"node": "gpu-a-1", "samples": [full_sample(100_000, ts, gpus=2, base=97)]})
    assert resp.status_code == 200 and resp.json()["accepted"] == 1, resp.content


@pytest.mark.parametrize("late_s", [61, 90, 150, 27 * 60], ids=["61s", "90s", "150s", "27min"])
def test_a_late_sample_is_counted_in_its_minute_and_its_hour(push: Any, redis_db: Any, late_s: int) -> None:
    t0, token = seed_recent(push)
    minute = rollups.floor_to(t0 - timedelta(seconds=late_s), timedelta(minutes=1))
    hour = rollups.floor_to(minute, timedelta(hours=1))
    # The hour run came right after the late sample's hour ended (the worker's clock is injectable: for a minute
    # in the current hour this is a little ahead), so the hour too was rolled up before the sample arrived.
    rollups.rollup_hours(hour + timedelta(hours=1, seconds=5))
    push_late(push, token, t0 - timedelta(seconds=late_s))
    # The worker's next runs come 3 minutes later (it restarted with the server): past the minute's lookback.
    later = t0 + timedelta(minutes=3)
    rollups.rollup_minutes(later)
    rollups.rollup_hours(later)
    counted = direct("SELECT n, gpu_util_pct_max FROM gpu_sample_1m b JOIN fleet_node n ON n.id = b.node_id "
                     "WHERE n.name = 'gpu-a-1' AND gpu = 0 AND bucket = %s", minute)
    assert counted and counted[0][1] == pytest.approx(97.0), "the late sample is missing from its minute"
    assert_rollup_matches_raw("1m", t0 - timedelta(hours=1), rollups.floor_to(later, timedelta(minutes=1)))
    assert_rollup_matches_raw("1h", hour, hour + timedelta(hours=1))
    # Every flag was consumed.
    assert not redis_db.keys("sy:rollup:*")


def test_a_sample_of_an_hour_already_rolled_up_reaches_it_through_the_minute_lookback(push: Any) -> None:
    """The last minute of an hour is still in the minute run's lookback when the hour run has already done that
    hour: the minute run must send the hour back for re-aggregation."""
    t0, token = seed_recent(push)
    minute = rollups.floor_to(t0 - timedelta(seconds=61), timedelta(minutes=1))
    hour = rollups.floor_to(minute, timedelta(hours=1))
    rollups.rollup_hours(hour + timedelta(hours=1, seconds=5))
    push_late(push, token, t0 - timedelta(seconds=61))
    rollups.rollup_minutes(t0 + timedelta(seconds=30))  # the minute is inside this run's own range
    rollups.rollup_hours(hour + timedelta(hours=1, minutes=5))
    assert_rollup_matches_raw("1m", minute, minute + timedelta(minutes=1))
    assert_rollup_matches_raw("1h", hour, hour + timedelta(hours=1))


def test_late_minutes_survive_a_database_error_during_the_rollup(push: Any, redis_db: Any) -> None:
    from django.db import DatabaseError

    t0, token = seed_recent(push)
    late_ts = t0 - timedelta(minutes=27)
    minute = rollups.floor_to(late_ts, timedelta(minutes=1))
    push_late(push, token, late_ts)
    # The database refuses the re-aggregation of that one minute (a full disk, a lost connection ...).
    with connection.cursor() as cur:
        cur.execute(f"""
            CREATE FUNCTION test_refuse_minute() RETURNS trigger LANGUAGE plpgsql AS $$
            BEGIN
                IF NEW.bucket = '{minute.isoformat()}'::timestamptz THEN RAISE EXCEPTION 'disk full (test)'; END IF;
                RETURN NEW;
            END $$;
            CREATE TRIGGER test_refuse_minute BEFORE INSERT ON gpu_sample_1m
                FOR EACH ROW EXECUTE FUNCTION test_refuse_minute();""")
    try:
        with pytest.raises(DatabaseError, match="disk full"):
            rollups.rollup_minutes(t0 + timedelta(minutes=3))
    finally:
        with connection.cursor() as cur:
            cur.execute("DROP TRIGGER IF EXISTS test_refuse_minute ON gpu_sample_1m; "
                        "DROP FUNCTION IF EXISTS test_refuse_minute()")
    # The next run, with the database back, still knows the minute is to be redone.
    rollups.rollup_minutes(t0 + timedelta(minutes=4))
    assert_rollup_matches_raw("1m", minute, minute + timedelta(minutes=1))
    counted = direct("SELECT gpu_util_pct_max FROM gpu_sample_1m b JOIN fleet_node n ON n.id = b.node_id "
                     "WHERE n.name = 'gpu-a-1' AND gpu = 0 AND bucket = %s", minute)
    assert counted == [(pytest.approx(97.0),)]


def test_retention_drops_only_partitions_past_the_limit(settings: Any) -> None:
    settings.RETENTION_RAW_DAYS = 7
    settings.RETENTION_1M_DAYS = 90
    settings.RETENTION_1H_DAYS = 730
    today = datetime.now(UTC).date()
    for days_ago in (10, 8, 7, 6, 1):
        partitions.ensure_partitions(today - timedelta(days=days_ago), 0)
    partitions.ensure_partitions(today - timedelta(days=100), 0)
    dropped = set(partitions.apply_retention())
    old_raw = {f"gpu_sample_p{today - timedelta(days=d):%Y%m%d}" for d in (10, 8)}
    assert old_raw <= dropped
    remaining = partition_names(schema.RAW_GPU)
    assert not old_raw & remaining
    for d in (6, 1, 0):
        assert f"gpu_sample_p{today - timedelta(days=d):%Y%m%d}" in remaining
    # The 1-minute partition of 8 and 10 days ago survives (90-day retention); the one of 100 days ago goes.
    minute_parts = partition_names(schema.GPU_1M)
    assert f"gpu_sample_1m_p{today - timedelta(days=10):%Y%m%d}" in minute_parts
    assert f"gpu_sample_1m_p{today - timedelta(days=100):%Y%m%d}" not in minute_parts
    # The hourly partition of that month is well inside two years.
    assert f"gpu_sample_1h_p{today - timedelta(days=100):%Y%m}" in partition_names(schema.GPU_1H)
