"""GET /api/v1/nodes/<name>/history: the node page's series in one response, from the table its range calls for."""

from __future__ import annotations

from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from statistics import mean
from typing import Any

import pytest
from django.contrib.auth import get_user_model
from django.test import Client

from dashboard.live import history
from dashboard.metrics import rollups
from tests.conftest import full_sample, make_node
from tests.live_pages.conftest import ROLES, json_of

pytestmark = pytest.mark.usefixtures("clean_samples")
URL = "/api/v1/nodes/{}/history"


def quiet(seq: int, ts: datetime, gpus: int = 2, base: float = 10.0) -> dict[str, Any]:
    """A full sample with no GPU events: full_sample fills the event columns with in-range noise."""
    s = full_sample(seq, ts, gpus=gpus, base=base)
    for g in s["gpus"]:
        g.update(clocks_event_reasons=0, xid_count=0, xid_last=None, ecc_corrected_total=0,
                 ecc_uncorrected_total=0, remapped_rows_uncorrectable=0, row_remap_pending=0)
    return s


def push_ok(push: Any, token: str, node: str, samples: list[dict[str, Any]]) -> None:
    for i in range(0, len(samples), 500):
        r = push(token, {"node": node, "samples": samples[i:i + 500]})
        assert r.status_code == 200, r.content


def aligned(ago: timedelta, step: int) -> datetime:
    return rollups.floor_to(datetime.now(UTC) - ago, timedelta(seconds=step))


# --- permissions -----------------------------------------------------------------------------------------------

def test_anonymous_gets_a_401_json_error(client: Client) -> None:
    make_node("gpu-a-1")
    resp = client.get(URL.format("gpu-a-1"))
    assert resp.status_code == 401
    assert "credentials" in json_of(resp)["error"].lower()
    assert Client(HTTP_AUTHORIZATION="Token sy_user_nope").get(URL.format("gpu-a-1")).status_code == 401


def test_a_node_token_does_not_read_history() -> None:
    token = make_node("gpu-a-1")
    assert Client(HTTP_AUTHORIZATION=f"Bearer {token}").get(URL.format("gpu-a-1")).status_code == 401


def test_a_user_without_a_role_is_refused() -> None:
    make_node("gpu-a-1")
    get_user_model().objects.create_user("nobody", password="pw-pw-pw-pw")
    c = Client()
    c.login(username="nobody", password="pw-pw-pw-pw")
    resp = c.get(URL.format("gpu-a-1"))
    assert resp.status_code == 403
    assert "viewer role" in resp.json()["error"]


@pytest.mark.parametrize("role", ROLES)
def test_every_role_reads_history(role: str, token_as: Callable[[str], Client],
                                  session_as: Callable[[str], Client]) -> None:
    make_node("gpu-a-1")
    for c in (token_as(role), session_as(role)):
        resp = c.get(URL.format("gpu-a-1"))
        assert resp.status_code == 200, resp.content
        assert resp.json()["node"] == "gpu-a-1"


def test_unknown_node_is_a_404_naming_it(viewer: Client) -> None:
    resp = viewer.get(URL.format("gpu-nope"))
    assert resp.status_code == 404
    assert resp.json()["error"] == "no node named 'gpu-nope'"


# --- hostile input ---------------------------------------------------------------------------------------------

@pytest.mark.parametrize("bad", ["2h", "1H", "15", "-1h", "1h; DROP TABLE gpu_sample", "x" * 5000, "７d"])
def test_a_range_outside_the_set_is_a_400_naming_the_field(viewer: Client, bad: str) -> None:
    make_node("gpu-a-1")
    resp = viewer.get(URL.format("gpu-a-1"), {"range": bad})
    assert resp.status_code == 400
    body = resp.json()
    assert set(body["fields"]) == {"range"}
    assert "is not a range; use one of 15m, 1h, 6h, 24h, 7d" in body["fields"]["range"]
    assert body["error"].startswith("range: ")
    assert len(body["error"]) < 200  # a huge input is not echoed back whole


def test_no_range_means_one_hour(viewer: Client) -> None:
    make_node("gpu-a-1")
    body = viewer.get(URL.format("gpu-a-1")).json()
    assert body["range"] == "1h" and body["source"] == "raw"


# --- source by range -------------------------------------------------------------------------------------------

@pytest.mark.parametrize(("rng", "source", "step", "tables"), [
    ("15m", "raw", 5, {"gpu": "gpu_sample", "node": "node_sample"}),
    ("1h", "raw", 15, {"gpu": "gpu_sample", "node": "node_sample"}),
    ("6h", "1m", 60, {"gpu": "gpu_sample_1m", "node": "node_sample_1m"}),
    ("24h", "1m", 300, {"gpu": "gpu_sample_1m", "node": "node_sample_1m"}),
    ("7d", "1h", 3600, {"gpu": "gpu_sample_1h", "node": "node_sample_1h"}),
])
def test_the_range_picks_the_table(viewer: Client, rng: str, source: str, step: int,
                                   tables: dict[str, str]) -> None:
    make_node("gpu-a-1")
    body = viewer.get(URL.format("gpu-a-1"), {"range": rng}).json()
    assert (body["range"], body["source"], body["step"], body["tables"]) == (rng, source, step, tables)
    span = datetime.fromisoformat(body["to"]) - datetime.fromisoformat(body["from"])
    assert span == timedelta(seconds=history.RANGES[rng].seconds)


def test_15m_serves_the_raw_samples_as_pushed(push: Any, viewer: Client) -> None:
    token = make_node("gpu-a-1")
    start = aligned(timedelta(minutes=3), 5)
    samples = [quiet(i + 1, start + timedelta(seconds=5 * i), base=float(i)) for i in range(30)]
    push_ok(push, token, "gpu-a-1", samples)
    body = viewer.get(URL.format("gpu-a-1"), {"range": "15m"}).json()
    assert body["source"] == "raw"
    assert [g["index"] for g in body["gpu_series"]] == [0, 1]
    g1 = body["gpu_series"][1]
    assert [datetime.fromisoformat(t) for t in g1["t"]] == [start + timedelta(seconds=5 * i) for i in range(30)]
    for name in history.GPU_SERIES:
        pushed = [s["gpus"][1][name] for s in samples]
        assert g1["series"][name] == pytest.approx(pushed, rel=1e-6), name
    node = body["node_series"]
    for name in history.NODE_SERIES:
        section = "host" if name in samples[0]["host"] else "inference"
        assert node["series"][name] == pytest.approx([s[section][name] for s in samples], rel=1e-6), name
    assert body["units"]["fb_used_bytes"] == "bytes" and body["units"]["ttft_p95_s"] == "seconds"
    assert body["events"] == [] and body["throttle"] == []


def test_1h_is_raw_at_15_s(push: Any, viewer: Client) -> None:
    token = make_node("gpu-a-1")
    start = aligned(timedelta(minutes=40), 15)
    samples = [quiet(i + 1, start + timedelta(seconds=15 * i), base=float(i % 40)) for i in range(120)]
    push_ok(push, token, "gpu-a-1", samples)
    body = viewer.get(URL.format("gpu-a-1"), {"range": "1h"}).json()
    assert body["source"] == "raw" and body["step"] == 15
    util = body["gpu_series"][0]["series"]["gpu_util_pct"]
    assert util == pytest.approx([s["gpus"][0]["gpu_util_pct"] for s in samples])


def test_null_stays_null_never_zero(push: Any, viewer: Client) -> None:
    token = make_node("gpu-a-1")
    start = aligned(timedelta(minutes=2), 5)
    samples = [quiet(i + 1, start + timedelta(seconds=5 * i), base=30.0) for i in range(4)]
    samples[1]["gpus"][1]["power_w"] = None
    samples[1]["host"]["net_rtt_ms"] = None
    samples[2]["inference"]["ttft_p95_s"] = None
    push_ok(push, token, "gpu-a-1", samples)
    body = viewer.get(URL.format("gpu-a-1"), {"range": "15m"}).json()
    assert body["gpu_series"][1]["series"]["power_w"][1] is None
    assert body["gpu_series"][0]["series"]["power_w"][1] is not None
    assert body["node_series"]["series"]["net_rtt_ms"][1] is None
    assert body["node_series"]["series"]["ttft_p95_s"] == [pytest.approx(samples[0]["inference"]["ttft_p95_s"]),
                                                    pytest.approx(samples[1]["inference"]["ttft_p95_s"]), None,
                                                    pytest.approx(samples[3]["inference"]["ttft_p95_s"])]


def test_6h_and_24h_read_the_minute_rollup(push: Any, viewer: Client) -> None:
    token = make_node("gpu-a-1")
    start = aligned(timedelta(minutes=30), 300)
    samples = [quiet(i + 1, start + timedelta(seconds=15 * i), base=float(i % 37)) for i in range(80)]  # 20 min
    samples[5]["gpus"][0]["temp_c"] = None  # one null in a minute: the minute is the average of the other three
    for s in samples[8:12]:
        s["host"]["net_rtt_ms"] = None  # a whole minute null: the bucket stays null
    push_ok(push, token, "gpu-a-1", samples)
    rollups.rollup_minutes()

    body = viewer.get(URL.format("gpu-a-1"), {"range": "6h"}).json()
    assert body["source"] == "1m" and body["step"] == 60
    g0 = body["gpu_series"][0]
    assert len(g0["t"]) == 20 and datetime.fromisoformat(g0["t"][0]) == start
    minute0 = [s["gpus"][0]["gpu_util_pct"] for s in samples[:4]]
    assert g0["series"]["gpu_util_pct"][0] == pytest.approx(mean(minute0))
    minute1_temp = [s["gpus"][0]["temp_c"] for s in samples[4:8] if s["gpus"][0]["temp_c"] is not None]
    assert g0["series"]["temp_c"][1] == pytest.approx(mean(minute1_temp))
    assert body["node_series"]["series"]["net_rtt_ms"][2] is None

    body = viewer.get(URL.format("gpu-a-1"), {"range": "24h"}).json()
    assert body["source"] == "1m" and body["step"] == 300
    cpu = body["node_series"]["series"]["cpu_util_pct"]
    assert len(cpu) == 4  # 20 minutes in 5-minute points
    assert cpu[0] == pytest.approx(mean(s["host"]["cpu_util_pct"] for s in samples[:20]))


def test_7d_reads_the_hour_rollup(push: Any, viewer: Client) -> None:
    token = make_node("gpu-a-1")
    hour = rollups.floor_to(datetime.now(UTC), timedelta(hours=1)) - timedelta(hours=1)
    samples = [quiet(i + 1, hour + timedelta(minutes=i), base=float(i % 50)) for i in range(60)]
    push_ok(push, token, "gpu-a-1", samples)
    rollups.rollup_hours()
    body = viewer.get(URL.format("gpu-a-1"), {"range": "7d"}).json()
    assert body["source"] == "1h" and body["step"] == 3600
    g1 = body["gpu_series"][1]
    assert [datetime.fromisoformat(t) for t in g1["t"]] == [hour]
    assert g1["series"]["sm_clock_mhz"][0] == pytest.approx(mean(s["gpus"][1]["sm_clock_mhz"] for s in samples))
    assert body["node_series"]["series"]["requests_waiting"][0] == pytest.approx(
        mean(s["inference"]["requests_waiting"] for s in samples))


# --- throttle reasons and GPU error events ---------------------------------------------------------------------

def test_throttle_reasons_become_intervals_in_words(push: Any, viewer: Client) -> None:
    token = make_node("gpu-a-1")
    start = aligned(timedelta(minutes=3), 5)
    samples = [quiet(i + 1, start + timedelta(seconds=5 * i)) for i in range(10)]
    for s in samples[2:5]:
        s["gpus"][1]["clocks_event_reasons"] = 0x4  # SW power cap
    for s in samples[5:7]:
        s["gpus"][1]["clocks_event_reasons"] = 0x4 | 0x40  # and HW thermal slowdown
    samples[9]["gpus"][0]["clocks_event_reasons"] = 0x1
    push_ok(push, token, "gpu-a-1", samples)
    body = viewer.get(URL.format("gpu-a-1"), {"range": "15m"}).json()
    at = [(start + timedelta(seconds=5 * i)).isoformat() for i in range(11)]
    assert body["throttle"] == [
        {"gpu": 1, "from": at[2], "to": at[5], "mask": 4, "reasons": ["SW power cap"]},
        {"gpu": 1, "from": at[5], "to": at[7], "mask": 0x44, "reasons": ["SW power cap", "HW thermal slowdown"]},
        {"gpu": 0, "from": at[9], "to": at[10], "mask": 1, "reasons": ["GPU idle"]},
    ]


def test_a_gap_in_the_samples_splits_a_throttle_interval(push: Any, viewer: Client) -> None:
    token = make_node("gpu-a-1")
    start = aligned(timedelta(minutes=3), 5)
    samples = [quiet(i + 1, start + timedelta(seconds=5 * i)) for i in (0, 1, 4, 5)]
    for s in samples:
        s["gpus"][0]["clocks_event_reasons"] = 0x8
    push_ok(push, token, "gpu-a-1", samples)
    throttle = viewer.get(URL.format("gpu-a-1"), {"range": "15m"}).json()["throttle"]
    assert [(t["gpu"], t["reasons"]) for t in throttle] == [(0, ["HW slowdown"]), (0, ["HW slowdown"])]


def test_xid_ecc_and_remap_are_events(push: Any, viewer: Client) -> None:
    token = make_node("gpu-a-1")
    start = aligned(timedelta(minutes=3), 5)
    samples = [quiet(i + 1, start + timedelta(seconds=5 * i)) for i in range(8)]
    samples[3]["gpus"][1].update(xid_count=2, xid_last=79)
    for s in samples[5:]:
        s["gpus"][0].update(ecc_uncorrected_total=3, ecc_corrected_total=0, row_remap_pending=1)
    for s in samples[6:]:
        s["gpus"][0]["ecc_corrected_total"] = 11
    push_ok(push, token, "gpu-a-1", samples)
    body = viewer.get(URL.format("gpu-a-1"), {"range": "15m"}).json()
    at = [(start + timedelta(seconds=5 * i)).isoformat() for i in range(8)]
    assert body["events_source"] == "raw"
    assert [(e["ts"], e["gpu"], e["kind"], e["value"], e["text"]) for e in body["events"]] == [
        (at[3], 1, "xid", 2, "XID 79 ×2"),
        (at[5], 0, "ecc_uncorrected", 3, "ECC uncorrected +3 (total 3)"),
        (at[5], 0, "row_remap_pending", 1, "row remap pending: GPU reset needed"),
        (at[6], 0, "ecc_corrected", 11, "ECC corrected +11 (total 11)"),
    ]
    xid = body["events"][0]
    assert xid["code"] == 79


def test_events_still_show_in_rollup_ranges(push: Any, viewer: Client) -> None:
    token = make_node("gpu-a-1")
    start = aligned(timedelta(minutes=20), 60)
    samples = [quiet(i + 1, start + timedelta(seconds=15 * i)) for i in range(20)]
    samples[7]["gpus"][0].update(xid_count=1, xid_last=48, clocks_event_reasons=0x20)
    push_ok(push, token, "gpu-a-1", samples)
    rollups.rollup_minutes()
    body = viewer.get(URL.format("gpu-a-1"), {"range": "6h"}).json()
    assert body["source"] == "1m" and body["events_source"] == "raw"
    assert [(e["kind"], e["text"]) for e in body["events"]] == [("xid", "XID 48 ×1")]
    assert [(t["gpu"], t["reasons"]) for t in body["throttle"]] == [(0, ["SW thermal slowdown"])]


def test_another_nodes_samples_stay_out(push: Any, viewer: Client) -> None:
    start = aligned(timedelta(minutes=2), 5)
    push_ok(push, make_node("gpu-a-1"), "gpu-a-1", [quiet(1, start, base=1.0)])
    push_ok(push, make_node("gpu-b-1", "pool-b"), "gpu-b-1", [quiet(1, start, gpus=4, base=2.0)])
    body = viewer.get(URL.format("gpu-a-1"), {"range": "15m"}).json()
    assert [g["index"] for g in body["gpu_series"]] == [0, 1]
    assert body["node_series"]["series"]["cpu_util_pct"] == [pytest.approx(1.0)]


def test_status_and_last_seen_ride_along(push: Any, viewer: Client) -> None:
    token = make_node("gpu-a-1")
    assert viewer.get(URL.format("gpu-a-1")).json()["status"] == "down"  # never reported
    now = datetime.now(UTC)
    newest = quiet(2, now - timedelta(seconds=40))
    push_ok(push, token, "gpu-a-1", [quiet(1, now - timedelta(seconds=60)), newest])
    body = viewer.get(URL.format("gpu-a-1"), {"range": "15m"}).json()
    assert body["status"] == "stale"  # 40 s silent at a 5 s interval
    assert datetime.fromisoformat(body["last_seen"]) == datetime.fromisoformat(newest["ts"])
    push_ok(push, token, "gpu-a-1", [quiet(3, now)])
    assert viewer.get(URL.format("gpu-a-1")).json()["status"] == "up"
