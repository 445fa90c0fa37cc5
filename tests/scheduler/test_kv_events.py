"""Precise prefix routing (prefix.source kv_events): the gateway's prefix index follows the nodes' own KV-cache
events (vLLM's format over real ZMQ from simulated nodes), resets a node whose event sequence has a gap, routes to
the node that really holds a prefix after another evicted it (where the approximate index picks wrong), and the
new policy field and gateway setting refuse bad input."""

from __future__ import annotations

import asyncio
import copy
import dataclasses
import random
import socket
import time
from collections.abc import Callable, Iterator
from typing import Any, TypeVar

import httpx
import msgpack
import pytest
from rest_framework.test import APIClient

from agents.sim.background import BackgroundFleet
from agents.sim.kv_events import KVEventsConfig
from control.policy.defaults import default_document
from control.policy.models import PolicyRevision
from control.policy.schemas import DocumentError, validate
from control.scheduler import kv_events
from control.scheduler.config import Config
from control.scheduler.core import Metrics, NodeSpec, Scheduler
from control.scheduler.prefix_index import block_keys, prompt_text
from core.audit.models import AuditEvent
from tests.conftest import make_user
from tests.scheduler.conftest import Fleet
from tests.scheduler.test_gateway import api_client  # noqa: F401  (the fixture)
from tests.scheduler.test_simfleet import SIM_MODEL

T = TypeVar("T")
NOW = 1_800_000_000.0
BLOCK = 64  # the simulator's block, which precise mode keys


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def stored(hashes: list[int], parent: int | None, text: str) -> list[Any]:
    return ["BlockStored", hashes, parent, [ord(c) for c in text], BLOCK, None, "GPU"]


def payload(*events: list[Any]) -> bytes:
    return msgpack.packb([time.time(), list(events), 0])


def seq(n: int) -> bytes:
    return n.to_bytes(8, "big")


def core(source: str = "kv_events", n: int = 2) -> Scheduler:
    doc = default_document("scheduler")
    doc["prefix"] = {**doc["prefix"], "block_chars": BLOCK, "source": source}
    sched = Scheduler(Config.from_document(validate("scheduler", doc)), random.Random(1))
    specs = [NodeSpec(f"n{i}", "p", "active", f"http://n{i}", ("m",)) for i in range(n)]
    sched.update(NOW, specs=specs,
                 samples={s.name: Metrics(NOW - 1, 1, 50.0, 30.0, 1.0, 0.1, 0, 0, 10.0) for s in specs})
    return sched


# --- decoding and translation (the subscriber thread's half) ---------------------------------------------------
@pytest.mark.parametrize("raw, field", [
    (b"\xc1", "not msgpack"), (msgpack.packb({"ts": 1}), "payload"), (msgpack.packb(["x", []]), "ts"),
    (msgpack.packb([1.0, {}]), "events"), (msgpack.packb([1.0, ["BlockStored"]]), "events[0]"),
    (msgpack.packb([1.0, [["Nope"]]]), "unknown event"),
    (msgpack.packb([1.0, [["BlockStored", [], None, [], 64, None, "GPU"]]]), "block_hashes"),
    (msgpack.packb([1.0, [["BlockStored", ["h"], None, [65] * 64, 64, None, "GPU"]]]), "block_hashes"),
    (msgpack.packb([1.0, [["BlockStored", [1], 2.5, [65] * 64, 64, None, "GPU"]]]), "parent_block_hash"),
    (msgpack.packb([1.0, [["BlockStored", [1], None, [65] * 63, 64, None, "GPU"]]]), "token_ids"),
    (msgpack.packb([1.0, [["BlockStored", [1], None, [-1] * 64, 64, None, "GPU"]]]), "token_ids"),
    (msgpack.packb([1.0, [["BlockStored", [1], None, [65] * 64, 0, None, "GPU"]]]), "block_size"),
    (msgpack.packb([1.0, [["BlockRemoved", 5, "GPU"]]]), "block_hashes"),
])
def test_a_malformed_message_is_refused_naming_the_field(raw: bytes, field: str) -> None:
    with pytest.raises(kv_events.BadEvent, match=field.replace("[", r"\[").replace("]", r"\]")):
        kv_events.decode(raw)


def test_the_translator_keys_blocks_as_prompts_are_keyed_and_counts_what_it_cannot_use() -> None:
    t = kv_events.Translator(lambda: BLOCK)
    text = "".join(chr(65 + i % 26) for i in range(3 * BLOCK))
    ops = t.message(b"kv@n0@m", seq(0), payload(stored([11, 12], None, text[:2 * BLOCK]),
                                                 stored([13], 12, text[2 * BLOCK:])))
    assert ops == [("join", "n0", ()), ("store", "n0", block_keys(text, BLOCK, 10)[:2]),
                   ("store", "n0", block_keys(text, BLOCK, 10)[2:])]
    # A block whose parent was never seen cannot be reached from a prompt's start; another block size cannot be
    # keyed like the policy's blocks; a topic without the node's name cannot be placed.
    assert t.message(b"kv@n0@m", seq(1), payload(stored([21], 99, text[:BLOCK]))) == []
    assert t.message(b"kv@n0@m", seq(2), payload(["BlockStored", [31], None, [65] * 16, 16, None, "GPU"])) == []
    assert t.message(b"vllm-events", seq(0), payload(stored([41], None, text[:BLOCK]))) == []
    assert t.counts["unknown_parent"] == 1 and t.counts["size_mismatch"] == 1 and t.counts["bad_topic"] == 1
    assert t.message(b"kv@n0@m", seq(3), payload(["BlockRemoved", [12, 404], "GPU"])) == [
        ("remove", "n0", block_keys(text, BLOCK, 10)[1:2])]
    # A gap (missed messages) or a publisher numbering from 0 again: the node's state is unknown.
    assert t.message(b"kv@n0@m", seq(7), payload(["BlockRemoved", [11], "GPU"])) == [("gap", "n0", ())]
    assert t.message(b"kv@n0@m", seq(0), payload(["AllBlocksCleared"])) == [("gap", "n0", ()), ("clear", "n0", ())]
    assert t.counts["gaps"] == 2


def test_a_gap_clears_the_node_and_its_sends_are_recorded_until_it_resyncs() -> None:
    sched = core()
    keys = block_keys("x" * (4 * BLOCK), BLOCK, 10)
    resync: dict[str, float] = {}
    kv_events.apply(sched, "join", "n0", (), 100.0, resync)
    kv_events.apply(sched, "store", "n0", keys, 100.0, resync)
    assert sched.event_fed == {"n0"} and sched.prefix.matches(keys) == {"n0": 4}
    other = block_keys("y" * (4 * BLOCK), BLOCK, 10)
    sched.sent(sched.nodes["n0"], 1, NOW, other)  # event-fed: a send is not taken for what the node caches
    assert sched.prefix.matches(other) == {}
    kv_events.apply(sched, "gap", "n0", (), 101.0, resync)
    assert sched.prefix.matches(keys) == {} and "n0" not in sched.event_fed
    sched.sent(sched.nodes["n0"], 2, NOW, other)  # after a gap, what is sent there counts again
    assert sched.prefix.matches(other) == {"n0": 4}
    kv_events.apply(sched, "store", "n0", keys, 102.0, resync)  # events still apply during the fallback
    assert sched.prefix.matches(keys) == {"n0": 4} and "n0" not in sched.event_fed
    kv_events.apply(sched, "remove", "n0", keys[2:], 101.0 + kv_events.GAP_FALLBACK_S, resync)
    assert sched.prefix.matches(keys) == {"n0": 2} and sched.event_fed == {"n0"}
    kv_events.apply(sched, "clear", "n0", (), 200.0, resync)
    assert sched.prefix.size("n0") == 0
    kv_events.apply(sched, "store", "ghost", keys, 200.0, resync)  # not a node of this gateway
    assert sched.prefix.matches(keys) == {}


# --- end to end: simulated nodes publishing to a real gateway --------------------------------------------------
@pytest.fixture
def endpoint() -> str:
    return f"tcp://127.0.0.1:{free_port()}"


@pytest.fixture
def sim(endpoint: str) -> Iterator[BackgroundFleet]:
    cfg = KVEventsConfig.parse(f'{{"enable_kv_cache_events": true, "publisher": "zmq", "endpoint": "{endpoint}"}}')
    with BackgroundFleet(pool="pool-a", model=SIM_MODEL, gpus=1, time_scale=20.0, seed=7, kv_events=cfg) as fleet:
        yield fleet


def on_loop(gw: Any, fn: Callable[[], T]) -> T:
    """Run fn on the gateway's event loop (where the index lives) and return its result."""
    async def call() -> T:
        return fn()

    return asyncio.run_coroutine_threadsafe(call(), gw.loop).result(10)


def set_source(api_client: Any, gw: Any, source: str) -> None:  # noqa: F811
    doc = api_client.get("/api/v1/policies/scheduler/").json()
    document = copy.deepcopy(doc["document"])
    document["prefix"] = {**document["prefix"], "block_chars": BLOCK, "source": source}
    # The nodes' samples are sent once by the test: a node whose sample went stale on a busy machine would be
    # filtered and its index forgotten mid-test.
    document["filters"]["max_stale_s"] = 3600
    r = api_client.post("/api/v1/policies/scheduler/revisions/", {
        "document": document, "reason": f"prefix source {source}", "parent": doc["id"]}, format="json")
    assert r.status_code == 201, r.content
    gw.wait(lambda: gw.app.policy_ids.get("scheduler") == r.json()["id"], timeout=30, what="policy loaded")


def start(fleet: Fleet, sim: BackgroundFleet, gateway: Any, endpoint: str, api_client: Any,  # noqa: F811
          n: int = 2) -> tuple[Any, list[Any]]:
    nodes = [sim.add_node(name=f"kv-{i}") for i in range(n)]
    for node in nodes:
        fleet.add(node.name, node.url, models=(SIM_MODEL,))
    gw = gateway(kv_events=endpoint)
    gw.wait(lambda: gw.eligible() == {x.name for x in nodes}, timeout=30, what=f"{n} sim nodes eligible")
    set_source(api_client, gw, "kv_events")
    # ZMQ drops what a node publishes before its connection is up (as with vLLM): reset each node's cache until the
    # gateway has heard from it.
    for node in nodes:
        deadline = time.monotonic() + 30
        while node.name not in on_loop(gw, lambda: set(gw.app.sched.event_fed)):
            assert time.monotonic() < deadline, f"no event from {node.name}"
            httpx.post(f"{node.url}/reset_prefix_cache", timeout=10)
            time.sleep(0.1)
    return gw, nodes


def fresh(fleet: Fleet, nodes: list[Any]) -> None:
    """New samples: a node whose sample is older than the policy's max_stale_s is filtered (and forgotten)."""
    for node in nodes:
        fleet.sample(node.name)


def chat(text: str) -> dict[str, Any]:
    return {"model": SIM_MODEL, "max_tokens": 2, "messages": [{"role": "user", "content": text}]}


def prompt_keys(body: dict[str, Any]) -> tuple[int, ...]:
    return block_keys(prompt_text(body), BLOCK, 128)


def holders(gw: Any, keys: tuple[int, ...]) -> dict[str, int]:
    return on_loop(gw, lambda: gw.app.sched.prefix.matches(keys))


def via_gateway(gw: Any, token: str, body: dict[str, Any]) -> str:
    r = httpx.post(f"{gw.url}/v1/chat/completions", json=body, headers={"Authorization": f"Bearer {token}"},
                   timeout=30)
    assert r.status_code == 200, r.text
    return r.headers["X-Switchyard-Node"]


def direct(node: Any, body: dict[str, Any]) -> None:
    r = httpx.post(f"{node.url}/v1/chat/completions", json=body, timeout=30)
    assert r.status_code == 200, r.text


def evict(sim: BackgroundFleet, node: Any) -> None:
    """Make the node need its memory: a request runs while its KV capacity is cut to almost nothing, so its cached
    blocks are evicted (BlockRemoved), then the capacity comes back."""
    profile = node.engine.profile
    sim.call(lambda f: setattr(node.engine, "profile", dataclasses.replace(profile, kv_tokens=20)))
    try:
        direct(node, chat("hi"))
    finally:
        sim.call(lambda f: setattr(node.engine, "profile", profile))


def wait(gw: Any, condition: Callable[[], bool], what: str) -> None:
    gw.wait(condition, timeout=30, what=what)


def text_of(tag: str, blocks: int = 12) -> str:
    rng = random.Random(tag)
    return "".join(rng.choice("abcdefghijklmnopqrstuvwxyz ") for _ in range(blocks * BLOCK))


def test_the_index_follows_a_nodes_stored_removed_and_cleared_blocks(
        fleet: Fleet, sim: BackgroundFleet, gateway: Any, endpoint: str, api_client: Any,  # noqa: F811
        user_token: str) -> None:
    gw, nodes = start(fleet, sim, gateway, endpoint, api_client)
    body = chat(text_of("stored"))
    keys = prompt_keys(body)
    direct(nodes[1], body)  # not through the gateway: only the node's events can tell it
    wait(gw, lambda: holders(gw, keys) == {nodes[1].name: len(keys)}, "the stored blocks indexed on kv-1")
    evict(sim, nodes[1])
    wait(gw, lambda: holders(gw, keys) == {}, "the evicted blocks gone from the index")
    direct(nodes[1], body)
    wait(gw, lambda: holders(gw, keys) == {nodes[1].name: len(keys)}, "stored again")
    assert httpx.post(f"{nodes[1].url}/reset_prefix_cache", timeout=10).status_code == 200
    wait(gw, lambda: holders(gw, keys) == {}, "AllBlocksCleared empties the node's index")
    state = on_loop(gw, gw.app.state)["kv_events"]
    assert state["counts"]["stored"] >= 2 * len(keys) and state["counts"]["removed"] >= len(keys)
    assert state["counts"]["gaps"] == 0 and state["counts"]["malformed"] == 0
    assert set(state["event_fed"]) == {n.name for n in nodes}


def test_a_gap_in_a_nodes_event_sequence_resets_that_node(
        fleet: Fleet, sim: BackgroundFleet, gateway: Any, endpoint: str, api_client: Any,  # noqa: F811
        user_token: str) -> None:
    gw, nodes = start(fleet, sim, gateway, endpoint, api_client)
    old, new = chat(text_of("before the gap")), chat(text_of("after the gap"))
    kept = chat(text_of("on the other node"))
    direct(nodes[0], old)
    direct(nodes[1], kept)
    wait(gw, lambda: holders(gw, prompt_keys(old)) == {nodes[0].name: 12}
         and holders(gw, prompt_keys(kept)) == {nodes[1].name: 12}, "both nodes' blocks indexed")
    # Five of kv-0's messages are lost on the way.
    sim.call(lambda f: setattr(nodes[0].kv_publisher, "seq", nodes[0].kv_publisher.seq + 5))
    direct(nodes[0], new)
    wait(gw, lambda: holders(gw, prompt_keys(new)) == {nodes[0].name: 12}, "the new blocks after the gap")
    assert holders(gw, prompt_keys(old)) == {}  # what kv-0 held before the gap is unknown now: dropped
    assert holders(gw, prompt_keys(kept)) == {nodes[1].name: 12}  # the other node is untouched
    assert on_loop(gw, lambda: set(gw.app.sched.event_fed)) == {nodes[1].name}  # kv-0 falls back to sends
    assert on_loop(gw, gw.app.state)["kv_events"]["counts"]["gaps"] == 1
    fresh(fleet, nodes)
    sent = chat(text_of("sent during the fallback"))
    where = via_gateway(gw, user_token, sent)
    if where == nodes[0].name:  # recorded at once as sent there, before any event of it
        assert nodes[0].name in holders(gw, prompt_keys(sent))


def test_precise_mode_routes_to_the_node_that_really_holds_the_prefix(
        fleet: Fleet, sim: BackgroundFleet, gateway: Any, endpoint: str, api_client: Any,  # noqa: F811
        user_token: str) -> None:
    gw, nodes = start(fleet, sim, gateway, endpoint, api_client)
    by_name = {n.name: n for n in nodes}

    def scenario(tag: str) -> tuple[str, str]:
        """A prompt goes through the gateway to node X; the other node, Y, computes it too (a request that did not
        come through this gateway); X then evicts it. Which node does the gateway pick for it now?"""
        fresh(fleet, nodes)
        body = chat(text_of(tag, 20))
        x = via_gateway(gw, user_token, body)
        y = next(n for n in by_name if n != x)
        direct(by_name[y], body)
        evict(sim, by_name[x])
        return x, y

    # Approximate (what the gateway sent): it still believes X holds the prefix.
    set_source(api_client, gw, "sent")
    x, y = scenario("approximate")
    fresh(fleet, nodes)
    assert via_gateway(gw, user_token, chat(text_of("approximate", 20))) == x
    # Precise (the nodes' events): X evicted it, Y holds it.
    set_source(api_client, gw, "kv_events")
    x, y = scenario("precise")
    keys = prompt_keys(chat(text_of("precise", 20)))
    wait(gw, lambda: holders(gw, keys) == {y: len(keys)}, "only Y indexed as holding the prefix")
    fresh(fleet, nodes)
    assert via_gateway(gw, user_token, chat(text_of("precise", 20))) == y


# --- bad input ---------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("value", ["precise", "KV_EVENTS", "kv-events", "", 3, None, ["kv_events"]])
def test_the_schema_refuses_a_bad_prefix_source_at_its_path(value: Any) -> None:
    doc = default_document("scheduler")
    doc["prefix"]["source"] = value
    with pytest.raises(DocumentError) as err:
        validate("scheduler", doc)
    assert list(err.value.fields) == ["prefix.source"]


@pytest.mark.django_db
@pytest.mark.parametrize("value", ["precise", 1, "<script>alert(1)</script>", "kv_events" * 1000])
def test_the_policy_api_answers_400_for_a_bad_source_and_stores_nothing(settings: Any, value: Any) -> None:
    settings.PASSWORD_HASHERS = ["django.contrib.auth.hashers.MD5PasswordHasher"]
    client = APIClient()
    client.credentials(HTTP_AUTHORIZATION=f"Token {make_user('operator', 'operator')}")
    current = client.get("/api/v1/policies/scheduler/").json()
    doc = copy.deepcopy(current["document"])
    doc["prefix"]["source"] = value
    revisions, audits = PolicyRevision.objects.count(), AuditEvent.objects.count()
    bad = client.post("/api/v1/policies/scheduler/revisions/", {"document": doc, "reason": "precise",
                                                                 "parent": current["id"]}, format="json")
    assert bad.status_code == 400, bad.content
    fields = bad.json()["fields"]
    assert "document.prefix.source" in fields or "prefix.source" in fields, fields
    assert PolicyRevision.objects.count() == revisions and AuditEvent.objects.count() == audits
    doc["prefix"]["source"] = "kv_events"
    good = client.post("/api/v1/policies/scheduler/revisions/", {"document": doc, "reason": "precise",
                                                                  "parent": current["id"]}, format="json")
    assert good.status_code == 201, good.content
    assert client.get("/api/v1/policies/scheduler/").json()["document"]["prefix"]["source"] == "kv_events"


@pytest.mark.parametrize("value", ["http://127.0.0.1:5557", "127.0.0.1:5557", "tcp://a,udp://b", "connect:x"])
def test_the_gateway_refuses_a_bad_events_address_naming_the_setting(value: str) -> None:
    from control.scheduler.gateway import Gateway

    with pytest.raises(ValueError, match="SWITCHYARD_GATEWAY_KV_EVENTS"):
        Gateway("gw-bad", kv_events=value)


def test_without_the_setting_the_gateway_runs_no_subscriber() -> None:
    from control.scheduler.gateway import Gateway

    gw = Gateway("gw-plain", kv_events="")
    assert gw.kv_endpoints == [] and gw.kv is None and "kv_events" not in gw.state()
