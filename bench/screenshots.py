"""Screenshots for the docs: docs/img/overview.png and docs/img/scaling.png from two hours of a 12-node pool.

    .venv/bin/python bench/screenshots.py                     # database `switchyard_screenshots`, emptied first

Not a benchmark: it lives here because, like the benches, it needs its own throw-away database (created, migrated
and emptied, the audit log included) and a `manage.py serve` of its own. The history is synthetic (samples written
with generate_series, rolled up by the real rollup code; scaling actions and audit events stamped in the past) so
the pictures show two hours of trends and changes; the pages themselves are the real ones, in Debian's Chromium.
"""

from __future__ import annotations

import argparse
import io
import os
import sys
from datetime import UTC, datetime, timedelta

from benchlib import ROOT, free_port, start_server

POOL = "pool-a"
NODES = 12
GPUS = 4
PASSWORD = "screenshots-only"


def seed(now: datetime) -> dict[str, str]:
    from django.core.management import call_command
    from django.db import connection, transaction

    from control.controller.models import ScalingAction
    from control.routing.models import RequestTotal
    from core.audit.models import AuditEvent
    from dashboard.fleet.models import Pool
    from dashboard.metrics import partitions, rollups, schema

    with connection.cursor() as cur:
        cur.execute(f"TRUNCATE {', '.join(t.name for t in schema.ALL_TABLES)}, metrics_fleet_1m, metrics_rollup_state, "
                    "routing_requesttotal, routing_requestminute, controller_scalingaction, audit_auditevent, "
                    "fleet_gpu, fleet_nodetoken, fleet_node, fleet_pool CASCADE")
    tokens = {}
    for i in range(NODES):
        out = io.StringIO()
        call_command("createnode", f"gpu-a-{i + 1:02d}", "--pool", POOL, stdout=out)
        tokens[f"gpu-a-{i + 1:02d}"] = out.getvalue().strip().splitlines()[-1]
    start = rollups.floor_to(now - timedelta(hours=2), timedelta(minutes=1))
    change = now - timedelta(minutes=45)  # the policy change the latency answers to
    partitions.ensure_days({start.date(), now.date()})
    with transaction.atomic(), connection.cursor() as cur:
        # A load wave; after the change, p95 latency and queue step up (the story the markers tell).
        cur.execute(
            "INSERT INTO gpu_sample (ts, node_id, gpu, seq, gpu_util_pct, power_w, energy_j) "
            "SELECT t, n.id, g, k, least(100, w * 100 + 6 * random()), 180 + 420 * w, 0 "
            "FROM generate_series(0, 239) k CROSS JOIN LATERAL (SELECT %s::timestamptz + k * interval '30 seconds' t) tt "
            "CROSS JOIN (SELECT id FROM fleet_node) n CROSS JOIN generate_series(0, %s - 1) g "
            "CROSS JOIN LATERAL (SELECT 0.55 + 0.3 * sin(k / 38.0) + 0.05 * random() w) ww", [start, GPUS])
        cur.execute(
            "INSERT INTO node_sample (ts, node_id, seq, generation_tokens_s, requests_waiting, ttft_p95_s, e2e_p95_s) "
            "SELECT t, n.id, k, 400 * w, round(30 * w + CASE WHEN t > %s THEN 25 ELSE 0 END), "
            "0.15 + 0.2 * w + CASE WHEN t > %s THEN 0.35 ELSE 0 END, 2 + 2 * w + CASE WHEN t > %s THEN 1.5 ELSE 0 END "
            "FROM generate_series(0, 239) k CROSS JOIN LATERAL (SELECT %s::timestamptz + k * interval '30 seconds' t) tt "
            "CROSS JOIN (SELECT id FROM fleet_node) n "
            "CROSS JOIN LATERAL (SELECT 0.55 + 0.3 * sin(k / 38.0) + 0.05 * random() w) ww",
            [change, change, change, start])
    rollups.aggregate("1m", start, rollups.floor_to(now, timedelta(minutes=1)) + timedelta(minutes=1))
    RequestTotal.objects.bulk_create([
        RequestTotal(minute=start + timedelta(minutes=m), requests=int(3000 + 1500 * ((m % 40) / 40)),
                     status_429=(60 if start + timedelta(minutes=m) > change else 0) + (m % 7) * 5)
        for m in range(120)])
    pool = Pool.objects.get(name=POOL)
    steps = [(100, 8, 10, "gpu_util_pct>85", "controller", ""), (70, 10, 12, "queue_length>50", "controller", ""),
             (20, 12, 11, "scale_down", "controller", "")]
    for ago, a, b, rule, actor, reason in steps:
        t = now - timedelta(minutes=ago)
        act = ScalingAction.objects.create(pool=pool, kind="scale_out" if b > a else "scale_in", from_size=a,
                                           to_size=b, rule=rule, state="done", actor=actor,
                                           reason=reason or f"{rule} for 60 s", created=t,
                                           finished=t + timedelta(minutes=3))
        AuditEvent.objects.create(time=t, actor=actor, action=f"scaling.{act.kind}", target=f"pool:{POOL}",
                                  reason=act.reason, request_id="screenshots", before={"size": a}, after={"size": b},
                                  details={"action": act.pk, "rule": rule})
    AuditEvent.objects.create(time=change, actor="olga", action="policy.activate", target="policy:scheduler",
                              reason="raise the prefix-affinity weight for the chat tenant", request_id="screenshots",
                              details={"version": 14})
    return tokens


def push_live(url: str, tokens: dict[str, str]) -> None:
    """One sample per node through the real ingest, so the tiles and heatmap are live in the picture."""
    import random

    import httpx

    ts = datetime.now(UTC).isoformat().replace("+00:00", "Z")
    for name, token in tokens.items():
        w = 0.6 + 0.1 * random.random()
        sample = {"ts": ts, "seq": 1_000_000, "host": {"cpu_util_pct": 35.0},
                  "gpus": [{"index": g, "uuid": f"GPU-{name}-{g}", "name": "NVIDIA H100 80GB HBM3",
                            "gpu_util_pct": round(100 * w, 1), "power_w": round(180 + 420 * w)} for g in range(GPUS)],
                  "inference": {"generation_tokens_s": round(400 * w), "requests_waiting": 35, "ttft_p95_s": 0.8}}
        r = httpx.post(f"{url}/api/v1/ingest", json={"node": name, "samples": [sample]},
                       headers={"Authorization": f"Bearer {token}"}, timeout=10)
        r.raise_for_status()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--db", default="switchyard_screenshots")
    parser.add_argument("--redis-db", type=int, default=12)
    args = parser.parse_args()
    os.environ.setdefault("DJANGO_SETTINGS_MODULE", "dashboard.settings")
    from overview import setup

    setup(args.db)
    from django.conf import settings
    from django.core.management import call_command

    now = datetime.now(UTC)
    tokens = seed(now)
    call_command("createuser", "vera", "--role", "viewer", "--password", PASSWORD, stdout=open(os.devnull, "w"))
    from urllib.parse import urlparse

    db_url = urlparse(settings.DATABASE_URL)._replace(path=f"/{args.db}").geturl()
    port = free_port()
    # Its own Redis database, so a running demo's live state is neither read nor touched.
    server = start_server(port, 1, db_url, settings.REDIS_URL.rsplit("/", 1)[0] + f"/{args.redis_db}")
    url = f"http://127.0.0.1:{port}"
    try:
        push_live(url, tokens)
        from playwright.sync_api import sync_playwright

        with sync_playwright() as pw:
            browser = pw.chromium.launch(executable_path="/usr/bin/chromium", headless=True,
                                         args=["--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage"])
            page = browser.new_page(viewport={"width": 1400, "height": 1050})
            page.goto(f"{url}/accounts/login/")
            page.fill("input[name=username]", "vera")
            page.fill("input[name=password]", PASSWORD)
            page.click("button[type=submit]")
            page.wait_for_url(f"{url}/")
            page.goto(f"{url}/?range=6h")
            page.wait_for_function("window.switchyardTrends && window.switchyardTrends.drawn.energy", timeout=30_000)
            page.wait_for_timeout(1500)
            page.screenshot(path=str(ROOT / "docs" / "img" / "overview.png"))
            page.goto(f"{url}/scaling/?pool={POOL}&timeline=6h")
            page.wait_for_function("window.switchyardTimeline && window.switchyardTimeline.doc", timeout=30_000)
            page.wait_for_timeout(1000)
            page.locator("#timeline").screenshot(path=str(ROOT / "docs" / "img" / "scaling.png"))
            browser.close()
        print("wrote docs/img/overview.png and docs/img/scaling.png")
    finally:
        server.terminate()
        server.wait(15)


if __name__ == "__main__":
    sys.path.insert(0, str(ROOT / "bench"))
    main()
