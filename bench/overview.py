"""Overview trends API at fleet scale: 1,000 nodes x 8 GPUs with 24 h of 1-minute rollups.

    .venv/bin/python bench/overview.py                      # generate (once) and measure
    .venv/bin/python bench/overview.py --regenerate         # rebuild the data first
    .venv/bin/python bench/overview.py --nodes 100 --hours 2 --db sy_bench_small

Uses its own database (default `switchyard_bench_overview`, created and migrated on the configured PostgreSQL; its
sample tables are emptied when it (re)generates) so a running demo is never touched.

1. Generate: 24 h of per-GPU and per-node minute rollups (INSERT .. SELECT generate_series: 11.5 M GPU rows at the
   default size), the gateway's per-minute totals, and a few hundred audit events to draw as markers; VACUUM
   ANALYZE (as autovacuum would: BRIN summaries, statistics). The fleet's minute table is then built from the
   stored rollups (fleet_rollup.rebuild, what the migration's backfill runs), an hour at a time.
   Steady state: one minute of raw samples for the whole fleet (12 per GPU) is rolled up by the real
   rollups.aggregate("1m") (minute rollups + the fleet's minute in one statement), timed against the two minute
   upserts alone: what the fleet table adds to every minute's rollup run.
2. Measure: GET /api/v1/overview/trends for every range through Django's test client with a viewer token (view,
   auth, queries and JSON: the whole server side of the call), `--calls` times each; p50/p95 against the 200 ms
   target.
3. Compare, in the same run: the same panels computed at query time from the per-GPU and per-node minute rollups
   (what the API would cost without the fleet table) for the ranges where that is still measurable.
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from datetime import UTC, datetime, timedelta

from benchlib import percentile

TARGET_MS = 200.0


def setup(db_name: str) -> None:
    from urllib.parse import urlparse

    import django
    from django.conf import settings

    settings.DATABASES["default"]["NAME"] = db_name
    from core import embedded

    url = urlparse(settings.DATABASE_URL)
    embedded._create_database(url._replace(path="/postgres").geturl(), db_name)
    django.setup()
    from django.core.management import call_command

    call_command("migrate", verbosity=0)


def generated_size() -> tuple[int, int]:
    from django.db import connection

    with connection.cursor() as cur:
        cur.execute("SELECT count(*) FROM fleet_node WHERE name LIKE 'bench-%%'")
        nodes = cur.fetchone()[0]
        cur.execute("SELECT count(*) FROM metrics_fleet_1m")
        minutes = cur.fetchone()[0]
    return nodes, minutes


def generate(nodes: int, gpus: int, hours: int, end: datetime) -> None:
    from django.db import connection, transaction

    from control.routing.models import RequestTotal
    from core.audit.models import AuditEvent
    from dashboard.fleet.models import Node, Pool
    from dashboard.metrics import fleet_rollup, partitions, schema

    start = end - timedelta(hours=hours)
    t0 = time.perf_counter()
    with connection.cursor() as cur:
        cur.execute(f"TRUNCATE {', '.join(t.name for t in schema.ALL_TABLES)}, {fleet_rollup.TABLE}, "
                    "routing_requesttotal, fleet_gpu, fleet_nodetoken, fleet_node, fleet_pool CASCADE")
    pools = [Pool.objects.create(name=f"bench-pool-{i}") for i in range(4)]
    Node.objects.bulk_create([Node(name=f"bench-{i:04d}", pool=pools[i % 4]) for i in range(nodes)], batch_size=1000)
    partitions.ensure_days({start.date() + timedelta(days=d) for d in range((end - start).days + 2)})
    print(f"generating {hours} h of minute rollups for {nodes} nodes x {gpus} GPUs "
          f"({nodes * gpus * hours * 60 / 1e6:.1f} M GPU rows)…", flush=True)
    step = timedelta(hours=1)
    lo = start
    while lo < end:
        hi = min(lo + step, end)
        with transaction.atomic(), connection.cursor() as cur:
            # A daily wave with per-GPU noise; power follows utilisation; tokens follow the wave.
            cur.execute(
                "INSERT INTO gpu_sample_1m (bucket, node_id, gpu, n, gpu_util_pct_avg, gpu_util_pct_max, "
                "power_w_avg, power_w_max) "
                "SELECT b, n.id, g, 12, u, least(100, u + 8), 120 + 5.8 * u, 130 + 5.8 * least(100, u + 8) "
                "FROM generate_series(%s::timestamptz, %s::timestamptz - interval '1 minute', interval '1 minute') b "
                "CROSS JOIN (SELECT id FROM fleet_node WHERE name LIKE 'bench-%%') n "
                "CROSS JOIN generate_series(0, %s - 1) g "
                "CROSS JOIN LATERAL (SELECT 55 + 35 * sin(extract(epoch FROM b) / 13751.0) "
                "                           + 8 * random() AS u) v",
                [lo, hi, gpus])
            cur.execute(
                "INSERT INTO node_sample_1m (bucket, node_id, n, generation_tokens_s_avg, generation_tokens_s_max, "
                "requests_waiting_avg, requests_waiting_max, ttft_p95_s_avg, ttft_p95_s_max, e2e_p95_s_avg, "
                "e2e_p95_s_max) "
                "SELECT b, n.id, 12, w * 900, w * 1000, w * 20, w * 30, 0.1 + w * 0.3, 0.2 + w * 0.3, 2 + w * 3, "
                "3 + w * 3 "
                "FROM generate_series(%s::timestamptz, %s::timestamptz - interval '1 minute', interval '1 minute') b "
                "CROSS JOIN (SELECT id FROM fleet_node WHERE name LIKE 'bench-%%') n "
                "CROSS JOIN LATERAL (SELECT 0.55 + 0.35 * sin(extract(epoch FROM b) / 13751.0) "
                "                           + 0.05 * random() AS w) v",
                [lo, hi])
        lo = hi
        print(f"  {lo:%H:%M} done ({time.perf_counter() - t0:.0f} s)", flush=True)
    minutes = [start + timedelta(minutes=i) for i in range(hours * 60)]
    RequestTotal.objects.bulk_create([RequestTotal(minute=m, requests=120_000 + (i % 90) * 500,
                                                   status_429=(i % 90) * 20, completion_tokens=3_000_000)
                                      for i, m in enumerate(minutes)], batch_size=2000)
    # Markers: a policy change every half hour and a scaling action every 10 minutes, spread over the range.
    # Written as rows (not through record(), which stamps the present) so that they fall inside the ranges.
    events = [AuditEvent(time=start + timedelta(minutes=30 * i), actor="bench", action="policy.activate",
                         target="policy:scheduler", reason=f"bench change {i}", request_id="bench",
                         details={"version": i + 2}) for i in range(hours * 2)]
    events += [AuditEvent(time=start + timedelta(minutes=10 * i), actor="controller", action="scaling.scale_out",
                          target=f"pool:bench-pool-{i % 4}", reason="bench", request_id="bench",
                          before={"size": 10}, after={"size": 12}, details={"rule": "gpu_util_pct>85"})
               for i in range(hours * 6)]
    AuditEvent.objects.bulk_create(events)
    print(f"generated in {time.perf_counter() - t0:.0f} s; vacuum analyze…", flush=True)
    with connection.cursor() as cur:
        cur.execute("VACUUM ANALYZE gpu_sample_1m")
        cur.execute("VACUUM ANALYZE node_sample_1m")

    t1 = time.perf_counter()
    lo = start
    while lo < end:
        with transaction.atomic(), connection.cursor() as cur:
            fleet_rollup.rebuild(cur, lo, min(lo + step, end))
        lo += step
    print(f"fleet minute table built from the rollups in {time.perf_counter() - t1:.1f} s "
          f"({hours * 60} minutes)", flush=True)


def time_minute_rollup(end: datetime, rounds: int = 5) -> tuple[list[float], list[float]]:
    """One minute of the whole fleet's raw samples rolled up: rollups.aggregate("1m") (with the fleet's minute)
    and, alternately, the two minute upserts alone. Returns (with fleet ms, without ms)."""
    from django.db import connection, transaction

    from dashboard.metrics import partitions, rollups, schema

    m = end + timedelta(minutes=2)  # past the generated rollups: a minute of its own
    partitions.ensure_days({m.date()})
    with transaction.atomic(), connection.cursor() as cur:
        cur.execute("DELETE FROM gpu_sample WHERE ts >= %s AND ts < %s", [m, m + timedelta(minutes=1)])
        cur.execute("DELETE FROM node_sample WHERE ts >= %s AND ts < %s", [m, m + timedelta(minutes=1)])
        cur.execute(
            "INSERT INTO gpu_sample (ts, node_id, gpu, seq, gpu_util_pct, power_w) "
            "SELECT %s::timestamptz + k * interval '5 seconds', n.id, g, k, 50 + 40 * random(), 300 + 300 * random() "
            "FROM generate_series(0, 11) k CROSS JOIN (SELECT id FROM fleet_node WHERE name LIKE 'bench-%%') n "
            "CROSS JOIN generate_series(0, 7) g", [m])
        cur.execute(
            "INSERT INTO node_sample (ts, node_id, seq, generation_tokens_s, requests_waiting, ttft_p95_s, e2e_p95_s) "
            "SELECT %s::timestamptz + k * interval '5 seconds', n.id, 1000000 + k, 500 * random(), 10, 0.2, 2.5 "
            "FROM generate_series(0, 11) k CROSS JOIN (SELECT id FROM fleet_node WHERE name LIKE 'bench-%%') n", [m])
    plain = [rollups._SQL[(schema.RAW_GPU.name, schema.GPU_1M.name)],
             rollups._SQL[(schema.RAW_NODE.name, schema.NODE_1M.name)]]
    with_fleet: list[float] = []
    without: list[float] = []
    hi = m + timedelta(minutes=1)
    for _ in range(rounds):
        t = time.perf_counter()
        rollups.aggregate("1m", m, hi)
        with_fleet.append((time.perf_counter() - t) * 1000)
        t = time.perf_counter()
        with transaction.atomic(), connection.cursor() as cur:
            for sql in plain:
                cur.execute(sql, [m, hi])
        without.append((time.perf_counter() - t) * 1000)
    with connection.cursor() as cur:  # leave the range's data as generated
        cur.execute("DELETE FROM metrics_fleet_1m WHERE bucket >= %s", [m])
    return with_fleet, without


DIRECT_SQL = """
SELECT g.t, g.util, g.util_max, g.power, s.tokens, s.queue, s.ttft, s.e2e FROM
 (SELECT date_bin(%(step)s, bucket, TIMESTAMPTZ '2000-01-01') t,
         sum(gpu_util_pct_avg * n) / sum(n) util, max(gpu_util_pct_max) util_max, sum(power_w_avg) power
  FROM gpu_sample_1m WHERE bucket >= %(lo)s AND bucket < %(hi)s GROUP BY 1) g
 LEFT JOIN
 (SELECT date_bin(%(step)s, bucket, TIMESTAMPTZ '2000-01-01') t, sum(generation_tokens_s_avg) tokens,
         sum(requests_waiting_avg) queue, max(ttft_p95_s_avg) ttft, max(e2e_p95_s_avg) e2e
  FROM node_sample_1m WHERE bucket >= %(lo)s AND bucket < %(hi)s GROUP BY 1) s ON s.t = g.t ORDER BY 1
"""


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--nodes", type=int, default=1000)
    parser.add_argument("--gpus", type=int, default=8)
    parser.add_argument("--hours", type=int, default=24)
    parser.add_argument("--calls", type=int, default=30, help="API calls per range (default 30)")
    parser.add_argument("--direct-calls", type=int, default=3, help="calls of the query-time alternative")
    parser.add_argument("--db", default="switchyard_bench_overview")
    parser.add_argument("--regenerate", action="store_true")
    args = parser.parse_args()

    os.environ.setdefault("DJANGO_SETTINGS_MODULE", "dashboard.settings")
    setup(args.db)
    from django.db import connection
    from django.test import Client

    from dashboard.live import trends
    from tests.conftest import make_user

    end = datetime.now(UTC).replace(second=0, microsecond=0)
    nodes, minutes = generated_size()
    if args.regenerate or nodes != args.nodes or minutes < args.hours * 60 - 60:
        generate(args.nodes, args.gpus, args.hours, end)
    else:
        print(f"reusing {nodes} nodes and {minutes} fleet minutes in {args.db} (--regenerate to rebuild)")
    with connection.cursor() as cur:
        cur.execute("SELECT max(bucket) FROM metrics_fleet_1m WHERE bucket < now()")
        end = cur.fetchone()[0] + timedelta(minutes=1)
        cur.execute("SELECT count(*) FROM gpu_sample_1m WHERE bucket >= %s", [end - timedelta(hours=args.hours)])
        gpu_rows = cur.fetchone()[0]
    print(f"data: {gpu_rows / 1e6:.1f} M GPU minute rows up to {end:%Y-%m-%d %H:%M} UTC")

    with_fleet, without = time_minute_rollup(end)
    print(f"rollup of one minute ({args.nodes * args.gpus * 12} raw GPU samples): with the fleet's minute p50 "
          f"{percentile(with_fleet, 0.5):.0f} ms (max {max(with_fleet):.0f}), minute upserts alone p50 "
          f"{percentile(without, 0.5):.0f} ms (max {max(without):.0f}); ratio "
          f"{percentile(with_fleet, 0.5) / percentile(without, 0.5):.2f}")

    from django.contrib.auth import get_user_model

    get_user_model().objects.filter(username="bench-viewer").delete()
    client = Client(HTTP_AUTHORIZATION=f"Token {make_user('bench-viewer', 'viewer')}")
    # Freeze "now" at the end of the generated data so every range is full, whenever the bench is rerun.
    real_trends = trends.trends
    trends_at = lambda rng, now=None: real_trends(rng, end - timedelta(seconds=1))  # noqa: E731
    trends.trends = trends_at  # type: ignore[assignment]
    print(f"\nGET /api/v1/overview/trends, {args.calls} calls per range (target p95 < {TARGET_MS:.0f} ms)")
    print(f"{'range':>6} {'points':>7} {'markers':>8} {'p50 ms':>8} {'p95 ms':>8}  verdict")
    worst = 0.0
    for name in trends.RANGES:
        times = []
        body = client.get("/api/v1/overview/trends", {"range": name}).json()  # warm-up, not timed
        for _ in range(args.calls):
            t = time.perf_counter()
            resp = client.get("/api/v1/overview/trends", {"range": name})
            times.append((time.perf_counter() - t) * 1000)
            assert resp.status_code == 200, resp.content[:300]
            body = resp.json()
        p50, p95 = percentile(times, 0.5), percentile(times, 0.95)
        worst = max(worst, p95)
        print(f"{name:>6} {len(body['t']):>7} {len(body['markers']):>8} {p50:>8.1f} {p95:>8.1f}  "
              f"{'ok' if p95 < TARGET_MS else 'OVER TARGET'}")
    trends.trends = real_trends  # type: ignore[assignment]

    print(f"\nalternative: the same panels from the per-GPU/per-node minute rollups at query time "
          f"({args.direct_calls} calls)")
    for name in ("15m", "1h", "6h"):
        rng = trends.RANGES[name]
        times = []
        for _ in range(args.direct_calls):
            t = time.perf_counter()
            with connection.cursor() as cur:
                cur.execute(DIRECT_SQL, {"step": timedelta(seconds=rng.step), "lo": end - timedelta(seconds=rng.seconds),
                                         "hi": end})
                cur.fetchall()
            times.append((time.perf_counter() - t) * 1000)
        print(f"{name:>6} query only: p50 {percentile(times, 0.5):8.1f} ms, max {max(times):8.1f} ms")
    print(f"\nverdict: worst p95 {worst:.1f} ms — {'meets' if worst < TARGET_MS else 'MISSES'} the {TARGET_MS:.0f} ms "
          "target")
    sys.exit(0 if worst < TARGET_MS else 1)


if __name__ == "__main__":
    main()
