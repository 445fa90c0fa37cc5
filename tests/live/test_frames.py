"""Frame builders and deltas as pure functions of a fleet view (no Redis, no database)."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Any

import pytest

from dashboard.live import frames
from dashboard.live.frames import NodeInfo

NOW = datetime(2026, 11, 28, 14, 0, 0, tzinfo=UTC)


def snap(name: str, pool: str, age_s: float = 1.0, gpus: int = 2, util: float = 50.0, **node: Any) -> dict[str, Any]:
    host = {"cpu_util_pct": 35.0, "disk_busy_pct": 10.0, "net_rtt_ms": 2.0}
    inference = {"requests_waiting": 4, "kv_cache_usage_pct": 80.0, "generation_tokens_s": 100.0,
                 "ttft_p95_s": 0.2}
    for k, v in node.items():
        (host if k in frames.HOST_NAMES else inference)[k] = v
    return {"node": name, "pool": pool, "ts": (NOW - timedelta(seconds=age_s)).isoformat(), "seq": 1,
            "host": host, "inference": inference,
            "gpus": [{"index": g, "gpu_util_pct": util + g, "temp_c": 60.0 + g, "power_w": 300.0,
                      "fb_used_bytes": 1000 * (g + 1)} for g in range(gpus)]}


def view(latest: dict[str, dict[str, Any]], infos: list[NodeInfo] | None = None) -> frames.FleetView:
    infos = infos or [NodeInfo(s["node"], s["pool"], None, -1) for s in latest.values()]
    return frames.make_view(infos, latest, NOW)


def test_rows_grouped_by_pool_then_natural_name() -> None:
    latest = {n: snap(n, p) for n, p in [("b-1", "pool-b"), ("a-10", "pool-a"), ("a-2", "pool-a"), ("a-1", "pool-b")]}
    frame = frames.gpu_frame(view(latest), "gpu_util_pct")
    assert [(r["pool"], r["node"]) for r in frame["rows"]] == [
        ("pool-a", "a-2"), ("pool-a", "a-10"), ("pool-b", "a-1"), ("pool-b", "b-1")]
    assert frame["columns"] == [0, 1] and len(frame["z"]) == 4 and all(len(row) == 2 for row in frame["z"])


def test_stale_and_down_rows_are_null_and_marked() -> None:
    latest = {"up": snap("up", "p"), "stale": snap("stale", "p", age_s=60)}
    infos = [NodeInfo("up", "p", None, 1), NodeInfo("stale", "p", None, 1), NodeInfo("never", "p", None, 3),
             NodeInfo("gone-quiet", "p", 60, 1)]
    latest["gone-quiet"] = snap("gone-quiet", "p", age_s=60)  # 60 s silent but its interval is 60 s: up
    frame = frames.gpu_frame(view(latest, infos), "gpu_util_pct")
    rows = {r["node"]: (r["status"], z) for r, z in zip(frame["rows"], frame["z"], strict=True)}
    assert frame["columns"] == [0, 1, 2, 3]  # the widest node (registered GPUs) sets the columns
    assert rows["up"] == ("up", [50.0, 51.0, None, None])
    assert rows["stale"] == ("stale", [None] * 4)
    assert rows["never"] == ("down", [None] * 4)
    assert rows["gone-quiet"][0] == "up"
    kpi = frames.kpi_frame(view(latest, infos))["values"]
    assert (kpi["nodes_up"], kpi["nodes_stale"], kpi["nodes_down"]) == (2, 1, 1)


def test_next_transition_is_when_the_first_up_node_goes_stale() -> None:
    v = view({"a": snap("a", "p", age_s=1.0), "b": snap("b", "p", age_s=10.0)})
    assert v.next_transition == pytest.approx(NOW.timestamp() - 10.0 + 15.0)


def test_fixed_scales_for_percent_and_temperature_else_data_range() -> None:
    v = view({"a": snap("a", "p")})
    assert (frames.gpu_frame(v, "gpu_util_pct")["zmin"], frames.gpu_frame(v, "gpu_util_pct")["zmax"]) == (0, 100)
    temp = frames.gpu_frame(v, "temp_c")
    assert (temp["zmin"], temp["zmax"], temp["unit"]) == (20.0, 100.0, "celsius")
    fb = frames.gpu_frame(v, "fb_used_bytes")
    assert (fb["zmin"], fb["zmax"], fb["unit"]) == (1000.0, 2000.0, "bytes")
    flat = frames.gpu_frame(v, "power_w")
    assert flat["zmax"] > flat["zmin"]  # one value everywhere still gives Plotly a usable range
    with pytest.raises(frames.TopicError):
        frames.gpu_frame(v, "cpu_util_pct")


def test_node_frame_normalises_columns_and_keeps_raw_values() -> None:
    v = view({"a": snap("a", "p", requests_waiting=10), "b": snap("b", "p", requests_waiting=30),
              "c": snap("c", "p", age_s=600)})
    f = frames.node_frame(v)
    assert f["columns"] == list(frames.DEFAULT_NODE_METRICS)
    q = f["columns"].index("requests_waiting")
    assert [row[q] for row in f["raw"]] == [10, 30, None] and [row[q] for row in f["z"]] == [0.0, 1.0, None]
    cpu = f["columns"].index("cpu_util_pct")
    assert f["z"][0][cpu] == 0.35 and f["scales"][cpu] == [0.0, 100.0] and f["units"][cpu] == "percent"
    custom = frames.node_frame(v, "load1,cpu_iowait_pct")
    assert custom["columns"] == ["load1", "cpu_iowait_pct"] and custom["topic"] == "node:load1,cpu_iowait_pct"
    with pytest.raises(frames.TopicError):
        frames.node_frame(v, "gpu_util_pct")


def test_kpis() -> None:
    v = view({"a": snap("a", "p", util=90.0, ttft_p95_s=0.5, requests_waiting=7),
              "b": snap("b", "p", util=10.0, ttft_p95_s=1.5, requests_waiting=3),
              "old": snap("old", "p", util=100.0, age_s=60, ttft_p95_s=9.0)})
    k = frames.kpi_frame(v)["values"]
    assert k["gpus"] == 4 and k["gpus_total"] == 6
    assert k["gpu_util_mean"] == 50.5 and k["gpu_util_max"] == 91.0  # the stale node's 100 % does not count
    assert k["queue_total"] == 10 and k["ttft_p95_s"] == 1.5  # worst up node, not the stale one's 9 s
    assert k["tokens_s"] == 200.0 and k["power_w"] == 1200 and k["alerts_active"] is None


def test_diff_none_delta_full_and_apply() -> None:
    latest = {"a": snap("a", "p"), "b": snap("b", "p")}
    old = frames.gpu_frame(view(latest), "gpu_util_pct")
    assert frames.diff(old, frames.gpu_frame(view(latest), "gpu_util_pct")) == ("none", None)

    changed = dict(latest, b=snap("b", "p"))
    changed["b"]["gpus"][1]["gpu_util_pct"] = 99.0
    new = frames.gpu_frame(view(changed), "gpu_util_pct")
    kind, delta = frames.diff(old, new)
    assert kind == "delta" and delta == {"cells": [[1, 1, 99.0]]}
    assert frames.apply(old, {**delta, "seq": 2})["z"] == new["z"]

    grown = dict(latest, c=snap("c", "p"))
    assert frames.diff(old, frames.gpu_frame(view(grown), "gpu_util_pct"))[0] == "full"  # a new row
    wider = dict(latest, a=snap("a", "p", gpus=3))
    assert frames.diff(old, frames.gpu_frame(view(wider), "gpu_util_pct"))[0] == "full"  # a new column

    stale = dict(latest, b=snap("b", "p", age_s=60))
    kind, delta = frames.diff(old, frames.gpu_frame(view(stale), "gpu_util_pct"))
    assert kind == "delta" and delta["rows"][0][:2] == [1, "stale"] and delta["cells"] == [[1, 0, None], [1, 1, None]]


def test_node_and_kpi_deltas() -> None:
    latest = {"a": snap("a", "p"), "b": snap("b", "p")}
    old_n, old_k = frames.node_frame(view(latest)), frames.kpi_frame(view(latest))
    busy = dict(latest, b=snap("b", "p", cpu_util_pct=89.0))  # below the attention threshold
    new_n = frames.node_frame(view(busy))
    kind, delta = frames.diff(old_n, new_n)
    assert kind == "delta" and delta["cells"] == [[1, 0, 0.89, 89.0]]
    assert frames.apply(old_n, {**delta, "seq": 5})["raw"] == new_n["raw"]
    kind, delta = frames.diff(old_k, frames.kpi_frame(view(busy)))
    assert kind == "none"
    hot = dict(latest, b=snap("b", "p", util=94.0))  # 94 and 95 %: one GPU over the attention threshold
    kind, delta = frames.diff(old_k, frames.kpi_frame(view(hot)))
    assert kind == "delta" and set(delta["values"]) == {"gpu_util_mean", "gpu_util_max", "attention"}
    assert (delta["values"]["gpu_util_mean"], delta["values"]["gpu_util_max"]) == (72.5, 95.0)
    assert [(i["node"], i["reasons"]) for i in delta["values"]["attention"]] == [
        ("b", ["1 of 2 GPUs at ≥ 95 % util"])]


def test_tail_frame_and_topic_checks() -> None:
    v = view({"a": snap("a", "p")})
    t = frames.tail_frame(v, "a")
    assert t["sample"]["node"] == "a" and t["status"] == "up"
    assert frames.diff(t, frames.tail_frame(v, "a")) == ("none", None)
    for good in ("kpi", "gpu:temp_c", "node:default", "node:cpu_util_pct,load1", "tail:gpu-a-1"):
        assert frames.check_topic(good) == good
    for bad in ("", "gpu:", "gpu:load1", "node:", "node:temp_c", "tail:UPPER", "tail:", "x" * 400, "fleet"):
        with pytest.raises(frames.TopicError):
            frames.check_topic(bad)


def test_reader_refresh_rereads_only_the_named_nodes(redis_db: Any) -> None:
    import orjson

    from dashboard.metrics.latest import LATEST_KEY

    reader = frames.LatestReader()
    redis_db.hset(LATEST_KEY, mapping={"a": orjson.dumps({"v": 1}), "b": orjson.dumps({"v": 1})})
    assert reader.read() == {"a": {"v": 1}, "b": {"v": 1}}
    redis_db.hset(LATEST_KEY, mapping={"a": orjson.dumps({"v": 2}), "b": orjson.dumps({"v": 2})})
    assert reader.refresh({"a"}) == {"a": {"v": 2}, "b": {"v": 1}}  # b did not announce a push: not re-read
    redis_db.hdel(LATEST_KEY, "a")
    redis_db.hset(LATEST_KEY, "c", b"not json")
    assert reader.refresh({"a", "c"}) == {"b": {"v": 1}}  # forgotten node dropped, bad value skipped
    assert reader.read() == {"b": {"v": 2}}


@pytest.mark.parametrize("interval", [None, 1, 60])
def test_status_agrees_with_liveness_status_of(interval: int | None) -> None:
    from dashboard.fleet.liveness import status_of

    ages = [0, 1, 2.9, 3, 3.1, 14.9, 15, 15.1, 29, 30, 31, 149, 150, 151, 179, 180, 181, 1799, 1800, 1801, 10**6]
    latest = {f"n{i}": snap(f"n{i}", "p", age_s=a) for i, a in enumerate(ages)}
    infos = [NodeInfo(name, "p", interval, 1) for name in latest]
    v = frames.make_view(infos, latest, NOW)
    for name, s in latest.items():
        assert v.by_name[name].status == status_of(s, interval, NOW), (name, s["ts"])


def test_attention_lists_not_live_nodes_first_then_the_reasons_in_words() -> None:
    hot = snap("hot", "p", util=96.0, requests_waiting=63, ttft_p95_s=2.4)
    hot["gpus"][1].update(temp_c=91.0, clocks_event_reasons=0x1 | 0x20, xid_count=1, xid_last=79)
    hot["gpus"][0].update(clocks_event_reasons=0x20)  # the same reason on two GPUs is one line
    idle = snap("idle", "p")
    idle["gpus"][0]["clocks_event_reasons"] = 0x1 | 0x2  # idle and app clocks: normal, not throttling
    v = view({"hot": hot, "idle": idle, "old": snap("old", "p", age_s=60), "fine": snap("fine", "p")})
    items = frames.kpi_frame(v)["values"]["attention"]
    assert [i["node"] for i in items] == ["old", "hot"]
    assert items[0]["status"] == "stale" and items[0]["ts"] is not None
    assert items[1]["reasons"] == ["2 of 2 GPUs at ≥ 95 % util", "GPUs 0, 1 throttled: SW thermal slowdown",
                                   "GPU 1 at 91 °C", "GPU 1 XID 79", "queue 63", "p95 TTFT 2.4 s"]


def test_attention_is_bounded_and_never_reported_nodes_stay_off_it() -> None:
    latest = {f"n{i}": snap(f"n{i}", "p", util=99.0) for i in range(frames.ATTENTION_LIMIT + 5)}
    infos = [NodeInfo(n, "p", None, -1) for n in [*latest, "new-node"]]
    items = frames.attention(view(latest, infos))
    assert len(items) == frames.ATTENTION_LIMIT and "new-node" not in {i["node"] for i in items}


def test_only_rows_of_nodes_that_pushed_are_rebuilt() -> None:
    """A tick's cost follows the nodes that pushed: an unchanged node's row is the one built last time, and a node
    with a new sample shows its new value (not the cached one)."""
    latest = {"a": snap("a", "p"), "b": snap("b", "p")}
    infos = [NodeInfo("a", "p", None, -1), NodeInfo("b", "p", None, -1)]
    old = frames.gpu_frame(view(latest, infos), "gpu_util_pct")
    pushed = dict(latest, b=snap("b", "p", util=70.0))
    new = frames.gpu_frame(view(pushed, infos), "gpu_util_pct")
    assert new["z"][0] is old["z"][0]  # "a" did not push: reused
    assert new["z"][1] == [70.0, 71.0]
    assert frames.diff(old, new) == ("delta", {"cells": [[1, 0, 70.0], [1, 1, 71.0]]})
    # The same sample turning stale blanks its row although the sample object did not change.
    stale = frames.gpu_frame(frames.make_view(infos, pushed, NOW + timedelta(seconds=60)), "gpu_util_pct")
    assert stale["z"] == [[None, None], [None, None]]
    # A non-fixed scale (bytes) is still computed over every live value, cached rows included.
    fb = frames.gpu_frame(view(pushed, infos), "fb_used_bytes")
    assert (fb["zmin"], fb["zmax"]) == (1000.0, 2000.0)


@pytest.mark.parametrize(("raw", "message"), [
    ("fast", "SWITCHYARD_LIVE_TICK_S must be a number, got 'fast'"),
    ("0", "SWITCHYARD_LIVE_TICK_S must be between 0.05 and 10, got '0'"),
    ("60", "SWITCHYARD_LIVE_TICK_S must be between 0.05 and 10, got '60'"),
])
def test_live_tick_setting_refuses_bad_values(monkeypatch: pytest.MonkeyPatch, raw: str, message: str) -> None:
    from dashboard import settings as project_settings

    monkeypatch.setenv("SWITCHYARD_LIVE_TICK_S", raw)
    with pytest.raises(ValueError) as err:
        project_settings.env_float("LIVE_TICK_S", 0.5, 0.05, 10.0)
    assert str(err.value) == message
    monkeypatch.setenv("SWITCHYARD_LIVE_TICK_S", "0.25")
    assert project_settings.env_float("LIVE_TICK_S", 0.5, 0.05, 10.0) == 0.25
    monkeypatch.delenv("SWITCHYARD_LIVE_TICK_S")
    assert project_settings.env_float("LIVE_TICK_S", 0.5, 0.05, 10.0) == 0.5


def test_rows_of_a_metric_nobody_builds_are_dropped(monkeypatch: pytest.MonkeyPatch) -> None:
    """Cached rows hold old samples alive: a metric no longer built must not keep them for the process's life."""
    latest = {"a": snap("a", "p")}
    frames.gpu_frame(view(latest), "temp_c")
    assert "temp_c" in frames._gpu_rows
    clock = frames.time.monotonic() + frames.ROWS_KEEP_S + 1
    monkeypatch.setattr(frames.time, "monotonic", lambda: clock)
    frames.gpu_frame(view(latest), "gpu_util_pct")
    assert "temp_c" not in frames._gpu_rows and "gpu_util_pct" in frames._gpu_rows
