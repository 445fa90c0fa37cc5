"""The simulator's KV-cache events (--kv-events-config): what its prefix cache does, published as vLLM publishes it
(ZMQ PUB multipart topic / 8-byte sequence / msgpack array-like tagged events), decoded here with plain msgpack so
that field order and types are those of vllm/distributed/kv_events.py."""

from __future__ import annotations

import asyncio
import dataclasses
import socket
import time
from collections.abc import Iterator
from typing import Any

import msgpack
import pytest
import zmq

from agents.sim.background import BackgroundFleet
from agents.sim.engine import PREFIX_BLOCK_CHARS, Engine, SimRequest, block_keys
from agents.sim.kv_events import KVEventsConfig, Publisher
from agents.sim.profiles import PROFILES
from tests.sim.conftest import MODEL

TINY = dataclasses.replace(PROFILES["h100"], kv_tokens=600)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@pytest.fixture
def sub() -> Iterator[tuple[zmq.Socket, str]]:
    """A SUB socket bound where the nodes publish (as the gateway binds), subscribed to every kv@ topic."""
    sock = zmq.Context.instance().socket(zmq.SUB)
    sock.setsockopt(zmq.SUBSCRIBE, b"kv@")
    sock.setsockopt(zmq.LINGER, 0)
    endpoint = f"tcp://127.0.0.1:{free_port()}"
    sock.bind(endpoint)
    yield sock, endpoint
    sock.close()


def config(endpoint: str) -> KVEventsConfig:
    return KVEventsConfig.parse(f'{{"enable_kv_cache_events": true, "publisher": "zmq", "endpoint": "{endpoint}"}}')


def receive(sock: zmq.Socket, until: Any, timeout: float = 15.0) -> list[tuple[bytes, int, list[Any]]]:
    """(topic, seq, decoded payload) of every message until `until(messages)` holds."""
    got: list[tuple[bytes, int, list[Any]]] = []
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if sock.poll(100):
            topic, seq, payload = sock.recv_multipart()
            assert len(seq) == 8
            got.append((topic, int.from_bytes(seq, "big"), msgpack.unpackb(payload, raw=False)))
            if until(got):
                return got
    raise AssertionError(f"not received in {timeout} s; got {got!r}")


def connected(sock: zmq.Socket, url: str, timeout: float = 15.0) -> None:
    """Wait until the node's PUB socket reaches us (ZMQ drops what is published before the subscription arrives,
    as with vLLM): reset its cache until an AllBlocksCleared comes through."""
    import httpx

    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        assert httpx.post(f"{url}/reset_prefix_cache", timeout=10).status_code == 200
        if sock.poll(200):
            while sock.poll(50):
                sock.recv_multipart()
            return
    raise AssertionError(f"no event from {url} in {timeout} s")


def events(got: list[tuple[bytes, int, list[Any]]]) -> list[list[Any]]:
    return [ev for _, _, payload in got for ev in payload[1]]


def tags(got: list[tuple[bytes, int, list[Any]]]) -> list[str]:
    return [ev[0] for ev in events(got)]


def wire(key: bytes) -> int:
    return int.from_bytes(key[:8], "big")


def test_a_node_publishes_block_stored_in_vllms_format(sub: tuple[zmq.Socket, str]) -> None:
    sock, endpoint = sub
    import httpx

    prompt = "".join(chr(ord("a") + i % 26) for i in range(5 * PREFIX_BLOCK_CHARS + 10))
    with BackgroundFleet(pool="t", model=MODEL, gpus=1, time_scale=20.0, kv_events=config(endpoint)) as fleet:
        node = fleet.add_node(name="n1")
        connected(sock, node.url)
        r = httpx.post(f"{node.url}/v1/completions", json={"model": MODEL, "prompt": prompt, "max_tokens": 2},
                       timeout=30)
        assert r.status_code == 200
        got = receive(sock, lambda g: "BlockStored" in tags(g))
        # A second prompt sharing the first two blocks stores only its own, chained to the second block.
        second = prompt[:2 * PREFIX_BLOCK_CHARS] + "Z" * (2 * PREFIX_BLOCK_CHARS)
        r = httpx.post(f"{node.url}/v1/completions", json={"model": MODEL, "prompt": second, "max_tokens": 2},
                       timeout=30)
        assert r.status_code == 200
        got += receive(sock, lambda g: "BlockStored" in tags(g))
    topic, seq, payload = got[0]
    assert topic == f"kv@n1@{MODEL}".encode()
    assert isinstance(payload, list) and len(payload) == 3  # [ts, events, data_parallel_rank]
    ts, _, rank = payload
    assert isinstance(ts, float) and abs(ts - time.time()) < 60 and rank == 0
    stored = [ev for ev in events(got) if ev[0] == "BlockStored"]
    first, other = stored[0], stored[-1]
    # ["BlockStored", block_hashes, parent_block_hash, token_ids, block_size, lora_id, medium]
    assert len(first) == 7
    _, hashes, parent, token_ids, block_size, lora_id, medium = first
    keys = block_keys(prompt)
    assert hashes == [wire(k) for k in keys] and all(isinstance(h, int) for h in hashes)
    assert parent is None and block_size == PREFIX_BLOCK_CHARS and lora_id is None and medium == "GPU"
    assert len(token_ids) == 5 * PREFIX_BLOCK_CHARS
    assert "".join(map(chr, token_ids)) == prompt[:5 * PREFIX_BLOCK_CHARS]  # a block's "tokens" are its characters
    assert other[1] == [wire(k) for k in block_keys(second)[2:]]
    assert other[2] == hashes[1]
    assert "".join(map(chr, other[3])) == "Z" * (2 * PREFIX_BLOCK_CHARS)
    seqs = [s for _, s, _ in got]
    assert seqs == sorted(seqs) and len(set(seqs)) == len(seqs)


def test_eviction_publishes_block_removed_and_a_reset_all_blocks_cleared(sub: tuple[zmq.Socket, str]) -> None:
    sock, endpoint = sub

    async def main() -> list[bytes]:
        engine = Engine(TINY, time_scale=1000.0)
        pub = Publisher(config(endpoint), "tiny", MODEL)
        engine.kv_events = pub.publish
        try:
            deadline = time.monotonic() + 15
            while not sock.poll(100):  # until the subscription has reached the PUB socket (see connected())
                assert time.monotonic() < deadline, "no event in 15 s"
                engine.reset_prefix_cache()
            while sock.poll(50):
                sock.recv_multipart()
            a = "a" * (10 * PREFIX_BLOCK_CHARS)
            req = SimRequest(prompt_tokens=160, target_tokens=2, finish_reason="length", prefix_text=a)
            engine.submit(req)
            await req.done
            # 500 tokens running leave room for 6 of the 10 cached 16-token blocks: 4 are evicted, oldest first.
            big = SimRequest(prompt_tokens=500, target_tokens=2, finish_reason="length", prefix_text="b" * 40)
            engine.submit(big)
            await big.done
            engine.reset_prefix_cache()
            return block_keys(a)
        finally:
            await engine.close()
            pub.close()

    keys = asyncio.run(main())
    got = receive(sock, lambda g: "AllBlocksCleared" in tags(g))
    evs = events(got)
    assert [e[0] for e in evs] == ["BlockStored", "BlockRemoved", "AllBlocksCleared"]
    removed = evs[1]
    assert len(removed) == 3 and removed[2] == "GPU"  # ["BlockRemoved", block_hashes, medium]
    assert removed[1] == [wire(k) for k in keys[:4]]  # in the engine's LRU order
    assert evs[2] == ["AllBlocksCleared"]


def test_a_restarted_node_announces_an_empty_cache(sub: tuple[zmq.Socket, str]) -> None:
    sock, endpoint = sub
    import httpx

    with BackgroundFleet(pool="t", model=MODEL, gpus=1, time_scale=20.0, kv_events=config(endpoint)) as fleet:
        node = fleet.add_node(name="n1")
        connected(sock, node.url)
        httpx.post(f"{node.url}/v1/completions", json={"model": MODEL, "prompt": "q" * 300, "max_tokens": 2},
                   timeout=30)
        receive(sock, lambda g: "BlockStored" in tags(g))
        assert node.engine.prefix_cached_blocks > 0
        fleet.call(lambda f: f.restart_node("n1"))
        got = receive(sock, lambda g: "AllBlocksCleared" in tags(g))
        assert got[-1][2][1] == [["AllBlocksCleared"]]
        assert node.engine.prefix_cached_blocks == 0  # the new process starts cold
        # And vLLM's reset route does the same.
        deadline = time.monotonic() + 15
        while node.state != "up" and time.monotonic() < deadline:
            time.sleep(0.05)
        assert httpx.post(f"{node.url}/reset_prefix_cache", timeout=10).status_code == 200
        receive(sock, lambda g: "AllBlocksCleared" in tags(g))


def test_events_are_off_by_default() -> None:
    with BackgroundFleet(pool="t", model=MODEL, gpus=1, time_scale=20.0) as fleet:
        node = fleet.add_node(name="n1")
        assert node.kv_publisher is None and node.engine.kv_events is None


@pytest.mark.parametrize("text, field", [
    ("not json", "not JSON"), ("[1]", "JSON object"), ('{"enable_kv_cache_events": "yes"}', "enable_kv_cache_events"),
    ('{"publisher": "kafka"}', "publisher"), ('{"endpoint": "http://x:1"}', "endpoint"),
    ('{"replay_endpoint": "tcp://*:5558"}', "replay_endpoint"), ('{"hwm": 0}', "hwm"), ('{"hwm": true}', "hwm"),
    ('{"topic": 5}', "topic"), ('{"enable_kv_cache_event": true}', "enable_kv_cache_event"),
])
def test_a_bad_kv_events_config_is_refused_naming_the_field(text: str, field: str) -> None:
    with pytest.raises(ValueError, match=field):
        KVEventsConfig.parse(text)


def test_simfleet_refuses_a_bad_kv_events_config() -> None:
    from django.core.management import CommandError, call_command

    with pytest.raises(CommandError, match="publisher"):
        call_command("simfleet", "--nodes", "0", "--no-agents", "--control-port", "-1", "--kv-events-config",
                     '{"enable_kv_cache_events": true, "publisher": "nats"}')
