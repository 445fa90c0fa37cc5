"""GET /api/v1/overview/trends: the overview's panels from the fleet's minutes, gateway totals and the audit."""

from __future__ import annotations

import csv
import io
from collections.abc import Callable
from datetime import timedelta
from typing import Any

import pytest
from django.contrib.auth import get_user_model
from django.test import Client

from control.routing import aggregate as routing_aggregate
from control.routing.models import RequestMinute, RequestTotal
from core.audit.models import AuditEvent
from dashboard.metrics import fleet_rollup
from tests.conftest import count, make_node
from tests.live_pages.conftest import json_of
from tests.overview.helpers import activate_scheduler, minute_ago, roll_up, sample
from tests.routing.conftest import entry, xadd

pytestmark = pytest.mark.usefixtures("clean_samples")
URL = "/api/v1/overview/trends"


def seed(push: Any) -> None:
    """Two nodes x 2 GPUs, three minutes: util 40/80 %, 300 W per GPU, 100 tokens/s per node."""
    tokens = {n: make_node(n, "pool-a") for n in ("gpu-a-1", "gpu-a-2")}
    seq = 0
    for minute in (3, 2, 1):
        for i, (name, token) in enumerate(tokens.items()):
            seq += 1
            s = sample(seq, minute_ago(minute) + timedelta(seconds=10), util=40.0 + 40.0 * i, power_w=300.0,
                       tokens_s=100.0)
            r = push(token, {"node": name, "samples": [s]})
            assert r.status_code == 200, r.content
    roll_up(minute_ago(4), minute_ago(0))


# --- roles ------------------------------------------------------------------------------------------------------

def test_anonymous_is_refused_and_nothing_leaks(client: Client) -> None:
    resp = client.get(URL)
    assert resp.status_code == 401
    assert "series" not in json_of(resp)


def test_a_user_without_a_role_is_refused() -> None:
    get_user_model().objects.create_user("nobody", password="pw-pw-pw-pw")
    c = Client()
    assert c.login(username="nobody", password="pw-pw-pw-pw")
    resp = c.get(URL)
    assert resp.status_code == 403
    assert "viewer" in json_of(resp)["error"]


@pytest.mark.parametrize("role", ["viewer", "operator", "admin"])
def test_every_role_reads_it_by_session_and_by_token(role: str, session_as: Callable[[str], Client],
                                                    token_as: Callable[[str], Client]) -> None:
    for c in (session_as(role), token_as(role)):
        resp = c.get(URL)
        assert resp.status_code == 200
        assert json_of(resp)["range"] == "1h"


# --- bad input --------------------------------------------------------------------------------------------------

@pytest.mark.parametrize("bad", ["2h", "1H", "-1h", "0", "1h;DROP TABLE x", "x" * 500, "1h\x00", "７d"])
def test_a_bad_range_is_a_400_naming_the_parameter(viewer: Client, bad: str) -> None:
    before = AuditEvent.objects.count()
    resp = viewer.get(URL, {"range": bad})
    assert resp.status_code == 400
    body = json_of(resp)
    assert body["error"].startswith("range:")
    assert "15m, 1h, 6h, 24h, 7d" in body["fields"]["range"]
    assert AuditEvent.objects.count() == before  # reading writes nothing


def test_a_bad_range_stays_a_json_error_when_csv_was_asked(viewer: Client) -> None:
    resp = viewer.get(URL, {"range": "3y", "format": "csv"})
    assert resp.status_code == 400
    assert json_of(resp)["fields"]["range"]


# --- what it answers -----------------------------------------------------------------------------------------------

def test_panels_come_from_the_fleet_minutes(viewer: Client, push: Any) -> None:
    seed(push)
    assert count(fleet_rollup.TABLE) == 3  # one row per minute, whatever the fleet size
    doc = json_of(viewer.get(URL, {"range": "15m"}))
    assert doc["step"] == 60 and len(doc["t"]) == 3
    s = doc["series"]
    assert s["gpu_util_mean"] == [60.0] * 3  # (40 + 80) / 2
    assert s["gpu_util_max"] == [80.0] * 3
    assert s["power_kw"] == [1.2] * 3  # 4 GPUs x 300 W
    assert s["tokens_s"] == [200.0] * 3
    assert s["energy_per_token_j"] == [6.0] * 3  # 1200 W / 200 tokens/s
    assert s["queue"] == [6.0] * 3
    assert s["ttft_p95_s"] == [0.25] * 3 and s["e2e_p95_s"] == [2.5] * 3
    assert s["requests_s"] == [0.0] * 3  # the fleet reported and the gateway routed nothing
    assert doc["labels"]["power_kw"] == {"label": "power draw", "unit": "kW"}


def test_a_late_sample_updates_its_fleet_minute(viewer: Client, push: Any) -> None:
    seed(push)
    token = make_node("gpu-a-3", "pool-a")
    r = push(token, {"node": "gpu-a-3", "samples": [sample(1, minute_ago(2) + timedelta(seconds=20), util=0.0,
                                                          power_w=600.0, tokens_s=0.0)]})
    assert r.status_code == 200
    roll_up(minute_ago(2), minute_ago(1))  # what the rollup does with a flagged late minute
    s = json_of(viewer.get(URL, {"range": "15m"}))["series"]
    assert s["gpu_util_mean"] == [60.0, 40.0, 60.0]
    assert s["power_kw"] == [1.2, 2.4, 1.2]


def test_gateway_rates_come_from_the_request_log_totals(viewer: Client, push: Any, redis_db: Any) -> None:
    seed(push)
    minute = minute_ago(2)
    for i in range(90):
        shed = i % 3 == 0
        xadd(redis_db, entry(ts=minute.timestamp() + 5 + i * 0.1, node="" if shed else "gpu-a-1",
                             cls="batch" if shed else "standard", status=429 if shed else 200))
    routing_aggregate.run()
    total = RequestTotal.objects.get(minute=minute)
    assert (total.requests, total.status_429) == (90, 30)
    assert total.requests == sum(RequestMinute.objects.filter(minute=minute).values_list("requests", flat=True))
    doc = json_of(viewer.get(URL, {"range": "15m"}))
    at = doc["t"].index(minute.isoformat())
    assert doc["series"]["requests_s"][at] == 1.5
    assert doc["series"]["rejected_429_s"][at] == 0.5


def test_policy_activations_and_scaling_are_markers_with_who_and_why(viewer: Client) -> None:
    rev = activate_scheduler("olga", "lower the latency weight for the 14:00 peak")
    doc = json_of(viewer.get(URL))
    [m] = [m for m in doc["markers"] if m["action"] == "policy.create"]
    assert m["kind"] == "policy" and m["actor"] == "olga"
    assert m["reason"] == "lower the latency weight for the 14:00 peak"
    assert m["what"] == f"policy:scheduler revision {rev.version}"


def test_canary_starts_and_verdicts_are_markers_its_steps_are_not(viewer: Client) -> None:
    from core.audit.context import Origin
    from core.audit.record import record

    origin = Origin(actor="controller", request_id="t-2", client=None)
    for action, reason in (("canary.start", "try weights v7 on 10 %"), ("canary.step", "to 25 %"),
                           ("canary.abort", "p95 TTFT +60 % on the canary arm")):
        record(origin, action, "policy:scheduler", reason)
    markers = [m for m in json_of(viewer.get(URL))["markers"] if m["kind"] == "canary"]
    assert [(m["what"], m["reason"]) for m in markers] == [
        ("policy:scheduler canary start", "try weights v7 on 10 %"),
        ("policy:scheduler canary abort", "p95 TTFT +60 % on the canary arm")]


def test_unrelated_audit_events_are_not_markers(viewer: Client) -> None:
    make_node("gpu-a-1")  # audits node.create and node.token.create
    assert AuditEvent.objects.filter(action="node.create").exists()
    assert json_of(viewer.get(URL))["markers"] == []


def test_csv_is_the_same_call_one_row_per_point(viewer: Client, push: Any) -> None:
    seed(push)
    doc = json_of(viewer.get(URL, {"range": "15m"}))
    resp = viewer.get(URL, {"range": "15m", "format": "csv"})
    assert resp.status_code == 200
    assert resp["Content-Type"].startswith("text/csv")
    assert "switchyard-overview-15m.csv" in resp["Content-Disposition"]
    rows = list(csv.reader(io.StringIO(resp.content.decode())))
    assert rows[0] == ["time", *doc["series"]]
    assert [r[0] for r in rows[1:]] == doc["t"]
    assert float(rows[1][rows[0].index("power_kw")]) == 1.2


def test_retention_drops_old_fleet_minutes_with_the_minute_rollups(push: Any) -> None:
    from datetime import UTC, datetime

    from django.conf import settings
    from django.db import connection

    from dashboard.metrics import partitions

    seed(push)
    old = datetime.now(UTC) - timedelta(days=settings.RETENTION_1M_DAYS + 1)
    with connection.cursor() as cur:
        cur.execute(f"INSERT INTO {fleet_rollup.TABLE} (bucket, gpus, nodes) VALUES (%s, 1, 1)", [old])
    assert count(fleet_rollup.TABLE) == 4
    partitions.apply_retention()
    assert count(fleet_rollup.TABLE) == 3  # the old minute went, the last three stayed
