"""Reading the data back: nodes with latest values, metric queries, Prometheus exposition."""

from __future__ import annotations

import re
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from django.test import Client

from dashboard.metrics import rollups
from tests.conftest import full_sample, make_node, make_user

pytestmark = pytest.mark.usefixtures("clean_samples")


@pytest.fixture
def viewer() -> Client:
    token = make_user("vera", "viewer")
    return Client(HTTP_AUTHORIZATION=f"Token {token}")


def seed(push: Any, minutes: int = 20, nodes: tuple[str, ...] = ("gpu-a-1",)) -> datetime:
    start = rollups.floor_to(datetime.now(UTC) - timedelta(minutes=minutes + 1), timedelta(minutes=1))
    for name in nodes:
        token = make_node(name)
        samples = [full_sample(i + 1, start + timedelta(seconds=15 * i), gpus=2, base=i % 50)
                   for i in range(minutes * 4)]
        assert push(token, {"node": name, "samples": samples}).status_code == 200
    return start


@pytest.mark.parametrize("path", ["/api/v1/nodes/", "/api/v1/pools/", "/api/v1/gpus/",
                                  "/api/v1/metrics/query?metric=gpu_util_pct", "/api/v1/metrics/catalogue",
                                  "/metrics/fleet"])
def test_reads_need_a_user(client: Client, path: str) -> None:
    resp = client.get(path)
    assert resp.status_code in (401, 403)
    assert "error" in resp.json()
    bad = Client(HTTP_AUTHORIZATION="Token sy_user_nope")
    assert bad.get(path).status_code == 401
    # A node token is for ingest only; it does not read the API.
    node_token = make_node("gpu-z-9", "pool-z")
    assert Client(HTTP_AUTHORIZATION=f"Bearer {node_token}").get(path).status_code == 401


def test_nodes_list_shows_last_seen_and_latest(push: Any, viewer: Client) -> None:
    make_node("gpu-silent", "pool-a")
    push(make_node("gpu-a-1"), {"node": "gpu-a-1", "samples": [full_sample(3, gpus=2, base=42)],
                                 "endpoint": "http://127.0.0.1:9001", "models": ["m1"]})
    nodes = {n["name"]: n for n in viewer.get("/api/v1/nodes/").json()["results"]}
    live = nodes["gpu-a-1"]
    assert live["status"] == "up" and live["pool"] == "pool-a" and live["gpus"] == 2
    assert live["last_seen"] and live["models"] == ["m1"] and live["endpoint"] == "http://127.0.0.1:9001"
    assert live["latest"]["gpus"][0]["gpu_util_pct"] == 42.0
    assert nodes["gpu-silent"]["status"] == "down" and nodes["gpu-silent"]["latest"] is None
    assert viewer.get("/api/v1/nodes/gpu-a-1/").json()["name"] == "gpu-a-1"
    assert viewer.get("/api/v1/nodes/nope/").status_code == 404
    assert viewer.get("/api/v1/nodes/?pool=pool-b").json() == {"count": 0, "next": None, "previous": None,
                                                                 "results": []}


def test_node_and_gpu_lists_are_paginated_on_a_large_fleet(push: Any, viewer: Client) -> None:
    """2,000 nodes and 16,000 GPUs: a page at a time, in a stable order, with the latest values of its nodes."""
    from dashboard.fleet.models import GPU, Node, Pool

    token = make_node("gpu-00000", "pool-big")
    pool = Pool.objects.get(name="pool-big")
    nodes = [Node.objects.get(name="gpu-00000"),
             *Node.objects.bulk_create([Node(name=f"gpu-{i:05d}", pool=pool) for i in range(1, 2000)])]
    GPU.objects.bulk_create([GPU(node=n, index=g, uuid=f"GPU-{n.name}-{g}", name="H100") for n in nodes
                             for g in range(8)])
    push(token, {"node": "gpu-00000", "samples": [full_sample(1, gpus=8, base=42)]})

    first = viewer.get("/api/v1/nodes/").json()
    assert first["count"] == 2000 and len(first["results"]) == 100 and first["previous"] is None
    assert first["results"][0]["name"] == "gpu-00000" and first["results"][0]["status"] == "up"
    assert first["results"][0]["latest"]["gpus"][3]["gpu_util_pct"] == 45.0  # base 42 + GPU 3
    assert first["results"][1]["latest"] is None and first["results"][1]["gpus"] == 8
    second = viewer.get(first["next"]).json()
    assert [n["name"] for n in second["results"]] == [f"gpu-{i:05d}" for i in range(100, 200)]

    seen: list[tuple[str, int]] = []
    url: str | None = "/api/v1/gpus/?limit=1000"
    while url:
        page = viewer.get(url).json()
        assert page["count"] == 16000 and len(page["results"]) <= 1000
        seen += [(g["node"], g["index"]) for g in page["results"]]
        url = page["next"]
    assert seen == [(f"gpu-{i:05d}", g) for i in range(2000) for g in range(8)]
    only = viewer.get("/api/v1/gpus/", {"node": "gpu-01999"}).json()
    assert only["count"] == 8 and [g["index"] for g in only["results"]] == list(range(8))


@pytest.mark.parametrize("path", ["/api/v1/nodes/", "/api/v1/gpus/"])
@pytest.mark.parametrize("params,field", [
    ({"limit": "0"}, "limit"), ({"limit": "1001"}, "limit"), ({"limit": "-5"}, "limit"), ({"limit": "ten"}, "limit"),
    ({"limit": "1e3"}, "limit"), ({"limit": "\u0663"}, "limit"), ({"offset": "-1"}, "offset"),
    ({"offset": "9" * 40}, "offset"), ({"offset": "1; DROP TABLE fleet_node"}, "offset"),
])
def test_bad_page_parameters_are_refused_by_name(viewer: Client, path: str, params: dict[str, str],
                                                  field: str) -> None:
    make_node("gpu-a-1")
    resp = viewer.get(path, params)
    assert resp.status_code == 400, resp.content
    assert "whole number from" in resp.json()["fields"][field] and field in resp.json()["error"]
    assert viewer.get(path).status_code == 200  # and nothing else went wrong


def test_query_raw_picks_raw_and_returns_units(push: Any, viewer: Client) -> None:
    seed(push)
    resp = viewer.get("/api/v1/metrics/query", {"metric": "gpu_util_pct", "node": "gpu-a-1", "gpu": "1",
                                                "from": "-30m", "step": "15"})
    assert resp.status_code == 200, resp.content
    data = resp.json()
    assert data["source"] == "raw" and data["unit"] == "percent" and data["step"] == 15
    assert [(s["node"], s["gpu"]) for s in data["series"]] == [("gpu-a-1", 1)]
    points = data["series"][0]["points"]
    assert len(points) == 80
    assert points[0][1] == pytest.approx(0 + 1)  # base 0 + gpu 1 offset


def test_query_uses_rollups_for_coarse_steps(push: Any, viewer: Client) -> None:
    seed(push, minutes=20)
    rollups.rollup_minutes()
    data = viewer.get("/api/v1/metrics/query", {"metric": "cpu_util_pct", "from": "-1h", "step": "300"}).json()
    assert data["source"] == "1m" and data["scope"] == "host"
    # Each 5-minute point from the 1-minute rollup equals the plain average of the raw samples in it.
    from django.db import connection

    with connection.cursor() as cur:
        cur.execute("SELECT date_bin('300 seconds', ts, TIMESTAMPTZ '2000-01-01') AS t, avg(cpu_util_pct) "
                    "FROM node_sample WHERE ts < date_trunc('minute', now()) GROUP BY t ORDER BY t")
        expected = [(t.isoformat(), v) for t, v in cur.fetchall()]
    points = data["series"][0]["points"]
    assert len(points) == len(expected) >= 4
    for (t, v), (et, ev) in zip(points, expected, strict=True):
        assert t == et and v == pytest.approx(ev)
    agg_max = viewer.get("/api/v1/metrics/query", {"metric": "cpu_util_pct", "from": "-1h", "step": "3600",
                                                   "agg": "max"}).json()
    assert agg_max["source"] == "1h" and agg_max["agg"] == "max"


@pytest.mark.parametrize(
    "params,field",
    [
        ({"metric": "gpu_utilization"}, "metric"),
        ({}, "metric"),
        ({"metric": "gpu_util_pct", "from": "last tuesday"}, "from"),
        ({"metric": "gpu_util_pct", "from": "-1h", "to": "-2h"}, "from"),
        ({"metric": "gpu_util_pct", "from": "-99999999999d"}, "from"),
        ({"metric": "gpu_util_pct", "step": "0"}, "step"),
        ({"metric": "gpu_util_pct", "step": "-5"}, "step"),
        ({"metric": "gpu_util_pct", "from": "-7d", "step": "1"}, "step"),
        ({"metric": "cpu_util_pct", "gpu": "0"}, "gpu"),
        ({"metric": "gpu_util_pct", "gpu": "x; DROP TABLE gpu_sample"}, "gpu"),
        ({"metric": "gpu_util_pct", "agg": "sum"}, "agg"),
        ({"metric": "gpu_util_pct", "node": "ghost"}, "node"),
    ],
)
def test_query_bad_parameters(viewer: Client, params: dict[str, str], field: str) -> None:
    resp = viewer.get("/api/v1/metrics/query", params)
    assert resp.status_code == 400
    assert field in resp.json()["fields"], resp.json()


def test_prometheus_exposition(push: Any, viewer: Client) -> None:
    from prometheus_client.parser import text_string_to_metric_families

    sample = full_sample(1, gpus=2, base=33)
    hostile = 'GPU-"},x="1\\\n'  # quote, brace, backslash, newline: an agent can send any uuid up to 96 chars
    sample["gpus"][1]["uuid"] = hostile
    push(make_node("gpu-a-1"), {"node": "gpu-a-1", "samples": [sample]})
    old = full_sample(1, datetime.now(UTC) - timedelta(minutes=10), gpus=1, base=77)
    push(make_node("gpu-old", "pool-b"), {"node": "gpu-old", "samples": [old]})
    resp = viewer.get("/metrics/fleet")
    assert resp.status_code == 200 and resp["Content-Type"].startswith("text/plain; version=0.0.4")
    text = resp.content.decode()
    families = {f.name: f for f in text_string_to_metric_families(text)}
    values = {(s.name, tuple(sorted(s.labels.items()))): s.value for f in families.values() for s in f.samples}

    def gpu(node: str, pool: str, index: int, uuid: str) -> tuple[tuple[str, str], ...]:
        return tuple(sorted({"pool": pool, "node": node, "gpu": str(index), "uuid": uuid}.items()))

    assert families["switchyard_gpu_util_pct"].type == "gauge"
    assert values[("switchyard_gpu_util_pct", gpu("gpu-a-1", "pool-a", 1, hostile))] == 34.0
    assert values[("switchyard_cpu_util_pct", (("node", "gpu-a-1"), ("pool", "pool-a")))] == 33.0
    # Counters are exposed as <name>_total; a catalogue name that already ends in _total keeps one suffix. (The
    # parser adds _total to a counter's samples by itself: read the text for what a scraper stores.)
    for counter in ("switchyard_energy_j", "switchyard_remapped_rows_uncorrectable", "switchyard_pcie_replay",
                    "switchyard_preemptions"):
        assert families[counter].type == "counter", counter
        assert f"\n# TYPE {counter}_total counter\n{counter}_total{{" in text, counter
    assert "_total_total" not in text
    assert values[("switchyard_energy_j_total", gpu("gpu-a-1", "pool-a", 0, "GPU-0000"))] == pytest.approx(
        sample["gpus"][0]["energy_j"])
    # A node that stopped reporting is down, and its old numbers are not exported as if live.
    assert values[("switchyard_node_up", (("node", "gpu-old"), ("pool", "pool-b")))] == 0
    assert values[("switchyard_node_up", (("node", "gpu-a-1"), ("pool", "pool-a")))] == 1
    assert [k for k in values if ("node", "gpu-old") in k[1] and k[0] != "switchyard_node_up"] == []


def test_openapi_schema_and_docs_are_served_from_vendored_assets(viewer: Client, client: Client) -> None:
    schema = viewer.get("/api/schema/", HTTP_ACCEPT="application/vnd.oai.openapi+json")
    assert schema.status_code == 200
    doc = schema.json()
    assert {"/api/v1/nodes/", "/api/v1/metrics/query", "/api/v1/pools/"} <= set(doc["paths"])
    assert doc["components"]["securitySchemes"]["tokenAuth"]["name"] == "Authorization"
    assert client.get("/api/schema/").status_code in (401, 403)
    page = viewer.get("/api/docs/")
    assert page.status_code == 200
    html = page.content.decode()
    assert "/static/drf_spectacular_sidecar/swagger-ui-dist/" in html
    # Nothing loaded from another host. (Not a bare "cdn" substring: the page carries a random nonce/hash, which
    # once contained those three letters.)
    assert re.findall(r'(?:src|href)\s*=\s*["\']?(?:https?:)?//', html, re.I) == []
    assert re.findall(r"(?:https?:)?//[\w.-]*cdn[\w.-]*", html, re.I) == []


def test_admin_lists_the_fleet_for_an_admin_only(client: Client) -> None:
    make_node("gpu-a-7")
    make_user("ada", "admin")
    make_user("vic", "viewer")
    assert client.get("/").status_code == 302
    assert client.get("/admin/fleet/node/").status_code == 302  # to the login page
    assert client.login(username="vic", password="correct-horse-battery")
    assert client.get("/admin/fleet/node/").status_code == 302  # a viewer is not staff
    assert client.login(username="ada", password="correct-horse-battery")
    page = client.get("/admin/fleet/node/")
    assert page.status_code == 200 and "gpu-a-7" in page.content.decode()
    assert client.get("/admin/fleet/nodetoken/add/").status_code == 403
