"""GET /api/v1/scaling/pools/<pool>/timeline/: sizes rebuilt from the action log, reporting nodes and each rule's
metric from the minute rollups, CSV from the same call; roles and bad input."""

from __future__ import annotations

import csv
import io
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from django.contrib.auth import get_user_model
from django.test import Client

from control.controller.models import ScalingAction
from core.audit.models import AuditEvent
from dashboard.fleet.models import Pool
from dashboard.metrics import rollups
from tests.conftest import full_sample, make_node, make_user
from tests.controller.test_actions import set_pool_policy

pytestmark = pytest.mark.usefixtures("clean_samples")
URL = "/api/v1/scaling/pools/{}/timeline/"


def viewer() -> Client:
    return Client(HTTP_AUTHORIZATION=f"Token {make_user('vera', 'viewer')}")


def minute(n_ago: int) -> datetime:
    return rollups.floor_to(datetime.now(UTC), timedelta(minutes=1)) - timedelta(minutes=n_ago)


def test_anonymous_and_roleless_users_are_refused(client: Client) -> None:
    Pool.objects.create(name="web")
    assert client.get(URL.format("web")).status_code == 401
    get_user_model().objects.create_user("nobody", password="pw-pw-pw-pw")
    c = Client()
    assert c.login(username="nobody", password="pw-pw-pw-pw")
    resp = c.get(URL.format("web"))
    assert resp.status_code == 403 and "viewer" in resp.json()["error"]


@pytest.mark.parametrize("bad", ["2h", "7d", "", "6H", "1h\x00", "x" * 300])
def test_a_bad_range_is_a_400_naming_the_parameter(bad: str) -> None:
    Pool.objects.create(name="web")
    c = viewer()
    before = AuditEvent.objects.count()
    resp = c.get(URL.format("web"), {"range": bad} if bad else {"range": "5m"})
    assert resp.status_code == 400
    assert resp.json()["error"].startswith("range:") and "1h, 6h, 24h" in resp.json()["fields"]["range"]
    assert AuditEvent.objects.count() == before


def test_an_unknown_pool_is_a_404() -> None:
    resp = viewer().get(URL.format("nope"))
    assert resp.status_code == 404 and "nope" in resp.json()["error"]


def test_sizes_follow_the_actions_and_metrics_come_from_the_rollups(push: Any) -> None:
    pool = Pool.objects.create(name="web")
    set_pool_policy("web", rules=[{"metric": "gpu_util_pct", "threshold": 85.0, "step": 2, "cooldown_s": 300,
                                   "window_s": 60},
                                  {"metric": "queue_length", "threshold": 50.0, "step": 1, "cooldown_s": 600,
                                   "window_s": 60}])
    for i, name in enumerate(("web-1", "web-2")):
        token = make_node(name, "web")
        s = full_sample(1, minute(10) + timedelta(seconds=5), gpus=2)
        for g in s["gpus"]:
            g["gpu_util_pct"] = 60.0 + 20 * i
        s["inference"]["requests_waiting"] = 30
        assert push(token, {"node": name, "samples": [s]}).status_code == 200
    rollups.aggregate("1m", minute(12), minute(0))
    rollups._set_watermark("1m", minute(1))  # the rollup has reached the minute before last
    # Scaled out 2 -> 4 at -30 min (done 2 minutes later), then 4 -> 6 at -5 min (failed), then 4 -> 3 pending.
    a1 = ScalingAction.objects.create(pool=pool, kind="scale_out", from_size=2, to_size=4, rule="gpu_util_pct>85",
                                      state="done", actor="controller", created=minute(30) + timedelta(seconds=10),
                                      finished=minute(28) + timedelta(seconds=30))
    ScalingAction.objects.create(pool=pool, kind="scale_out", from_size=4, to_size=6, rule="queue_length>50",
                                 state="failed", created=minute(5) + timedelta(seconds=1))
    a3 = ScalingAction.objects.create(pool=pool, kind="scale_in", from_size=4, to_size=3, rule="manual",
                                      state="pending", actor="olga", reason="night", created=minute(2))
    doc = viewer().get(URL.format("web"), {"range": "1h"}).json()
    t = doc["t"]
    assert len(t) == 60 and doc["step"] == 60
    at = {m: i for i, m in enumerate(t)}
    assert doc["desired"][at[minute(31).isoformat()]] == 2
    assert doc["desired"][at[minute(30).isoformat()]] == 4  # made during that minute
    assert doc["actual"][at[minute(29).isoformat()]] == 2 and doc["actual"][at[minute(28).isoformat()]] == 4
    assert doc["desired"][at[minute(5).isoformat()]] == 4  # a failed action does not move it
    assert doc["desired"][-1] == 3 and doc["actual"][-1] == 4
    i = at[minute(10).isoformat()]
    assert doc["reporting"][i] == 2 and doc["reporting"][i + 1] == 0
    assert doc["reporting"][-1] is None  # not rolled up yet: unknown, not zero
    gpu, queue = doc["rules"][0], doc["rules"][1]
    assert (gpu["metric"], gpu["threshold"], gpu["values"][i]) == ("gpu_util_pct", 85.0, 70.0)
    assert (queue["metric"], queue["values"][i]) == ("queue_length", 60.0)  # summed over nodes
    assert doc["rules"][2]["scale_down"] is True
    assert [(a["id"], a["rule"], a["from_size"], a["to_size"], a["state"]) for a in doc["actions"]] == [
        (a1.pk, "gpu_util_pct>85", 2, 4, "done"), (a1.pk + 1, "queue_length>50", 4, 6, "failed"),
        (a3.pk, "manual", 4, 3, "pending")]
    assert doc["forecast"] is None  # not a predictive pool

    resp = viewer().get(URL.format("web"), {"range": "1h", "format": "csv"})
    assert resp.status_code == 200 and resp["Content-Type"].startswith("text/csv")
    rows = list(csv.reader(io.StringIO(resp.content.decode())))
    assert rows[0] == ["time", "desired", "actual", "reporting", "gpu_util_pct>85", "queue_length>50",
                       "gpu_util_pct<30"]
    assert rows[1 + i][3:6] == ["2", "70.0", "60.0"]


def test_a_pool_that_never_scaled_has_no_sizes() -> None:
    Pool.objects.create(name="web")
    doc = viewer().get(URL.format("web"), {"range": "6h"}).json()
    assert len(doc["t"]) == 360 and set(doc["desired"]) == {None} and doc["actions"] == []
