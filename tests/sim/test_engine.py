"""The performance model, observed through real HTTP: batching limit and queue, prefill cost, batch-size decode
cost, slow-down, power-cap DVFS, KV preemption. Times compared are model times the engine computed, never
wall-clock measurements."""

from __future__ import annotations

import time
from collections.abc import Callable
from concurrent.futures import Future, ThreadPoolExecutor
from typing import Any

import httpx
import pytest

from agents.collectors.inference import parse_prometheus
from agents.sim.background import BackgroundFleet
from agents.sim.profiles import PROFILES
from tests.sim.conftest import MODEL


def complete(client: httpx.Client, url: str, prompt: str, max_tokens: int = 8) -> httpx.Response:
    resp = client.post(f"{url}/v1/completions", json={"model": MODEL, "prompt": prompt, "max_tokens": max_tokens,
                                                      "ignore_eos": True, "temperature": 0})
    assert resp.status_code == 200, resp.text
    return resp


def prefill_step(resp: httpx.Response) -> float:
    """Model seconds from admission to first token: the prefill step the engine computed."""
    return float(resp.headers["x-sim-ttft-s"]) - float(resp.headers["x-sim-queue-s"])


def gauge(client: httpx.Client, url: str, name: str) -> float:
    return parse_prometheus(client.get(f"{url}/metrics").text)[name][0][1]


def wait_until(check: Callable[[], bool], timeout: float = 20.0) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if check():
            return True
        time.sleep(0.02)
    return False


def fire(url: str, n: int, body: Callable[[int], dict[str, Any]]) -> tuple[ThreadPoolExecutor, list[Future[Any]]]:
    pool = ThreadPoolExecutor(max_workers=n)
    client = httpx.Client(timeout=120.0, limits=httpx.Limits(max_connections=n))
    futures = [pool.submit(client.post, f"{url}/v1/completions", json=body(i)) for i in range(n)]
    return pool, futures


def test_more_requests_than_the_batch_limit_wait_in_the_queue(fleet: BackgroundFleet, client: httpx.Client) -> None:
    node = fleet.add_node(profile="l40s")
    limit = PROFILES["l40s"].max_seqs
    fleet.slow_down(node.name, 4.0)  # long enough a batch to look at it
    pool, futures = fire(node.url, limit + 10, lambda i: {"model": MODEL, "prompt": f"request {i}",
                                                          "max_tokens": 300, "ignore_eos": True})
    try:
        running_seen: list[float] = []

        def full_batch_and_a_queue() -> bool:
            # The engine admits arrivals at its step boundaries, so a request can sit in "waiting" for one step
            # while the batch still has room: wait for the state it settles in instead of reading it once.
            running = gauge(client, node.url, "vllm:num_requests_running")
            running_seen.append(running)
            return running == limit and gauge(client, node.url, "vllm:num_requests_waiting") == 10

        assert wait_until(full_batch_and_a_queue), running_seen[-5:]
        assert max(running_seen) == limit  # never more than the limit
        assert gauge(client, node.url, "vllm:kv_cache_usage_perc") > 0
        fleet.slow_down(node.name, 0.05)  # let them finish quickly
        assert all(f.result(60).status_code == 200 for f in futures)
    finally:
        pool.shutdown(wait=True)
    assert gauge(client, node.url, "vllm:num_requests_waiting") == 0
    assert gauge(client, node.url, "vllm:num_requests_running") == 0
    m = parse_prometheus(client.get(f"{node.url}/metrics").text)
    # The ten that waited spent a whole batch's decoding (far above the first bucket, 0.3 s) in the queue.
    buckets = {labels["le"]: v for labels, v in m["vllm:request_queue_time_seconds_bucket"]}
    assert buckets["+Inf"] == limit + 10
    assert buckets["+Inf"] - buckets["0.3"] >= 10


def test_a_longer_prompt_takes_longer_to_the_first_token(fleet: BackgroundFleet, client: httpx.Client) -> None:
    node = fleet.add_node(profile="h100")
    p = PROFILES["h100"]
    short = complete(client, node.url, "a" * 400)  # 100 tokens
    long = complete(client, node.url, "b" * 40_000)  # 10,000 tokens
    assert prefill_step(short) == pytest.approx(p.decode_s + 100 / p.prefill_tps, rel=1e-3)
    assert prefill_step(long) == pytest.approx(p.decode_s + 10_000 / p.prefill_tps, rel=1e-3)
    assert float(long.headers["x-sim-ttft-s"]) > float(short.headers["x-sim-ttft-s"])


def test_profiles_differ_in_speed(fleet: BackgroundFleet, client: httpx.Client) -> None:
    steps = {name: prefill_step(complete(client, fleet.add_node(profile=name).url, "c" * 8000))
             for name in ("h100", "a100", "l40s")}
    assert steps["h100"] < steps["a100"] < steps["l40s"]


def test_slow_down_multiplies_model_time(fleet: BackgroundFleet, client: httpx.Client) -> None:
    node = fleet.add_node(profile="a100")
    normal = prefill_step(complete(client, node.url, "d" * 4000))
    fleet.slow_down(node.name, 3.0)
    slowed = prefill_step(complete(client, node.url, "e" * 4000))
    assert slowed == pytest.approx(3 * normal, rel=1e-3)


def mean_itl(fleet: BackgroundFleet, name: str) -> float:
    return fleet.call(lambda f: f.node(name).engine.itl.sum / f.node(name).engine.itl.count)


def test_decode_steps_get_slower_as_the_batch_grows(fleet: BackgroundFleet, client: httpx.Client) -> None:
    alone = fleet.add_node(profile="h100")
    complete(client, alone.url, "f", max_tokens=50)
    assert mean_itl(fleet, alone.name) == pytest.approx(PROFILES["h100"].decode_s, rel=1e-3)
    busy = fleet.add_node(profile="h100")
    pool, futures = fire(busy.url, 32, lambda i: {"model": MODEL, "prompt": f"g{i}", "max_tokens": 50,
                                                  "ignore_eos": True})
    with pool:
        assert all(f.result(60).status_code == 200 for f in futures)
    assert mean_itl(fleet, busy.name) > 1.1 * PROFILES["h100"].decode_s


def test_a_power_cap_slows_decoding(fleet: BackgroundFleet, client: httpx.Client) -> None:
    free = fleet.add_node(profile="l40s")
    capped = fleet.add_node(profile="l40s")
    for gpu in range(2):
        assert fleet.call(lambda f, g=gpu: f.node(capped.name).gpu.set_power_limit(g, 100.0)) == 100.0
    for node in (free, capped):
        complete(client, node.url, "h", max_tokens=40)
    assert mean_itl(fleet, capped.name) > 1.05 * mean_itl(fleet, free.name)


def test_kv_overflow_preempts_and_every_request_still_completes(client: httpx.Client) -> None:
    with BackgroundFleet(pool="kv", model=MODEL, gpus=1, time_scale=400.0) as fleet:
        node = fleet.add_node(profile="l40s")
        # 24 sequences of 1,500 prompt tokens fit the 40,000-token cache when admitted, not after 700 more tokens.
        pool, futures = fire(node.url, 24, lambda i: {"model": MODEL, "prompt": f"{i:04d}" * 1500,
                                                      "max_tokens": 700, "ignore_eos": True})
        with pool:
            results = [f.result(120) for f in futures]
        assert all(r.status_code == 200 and r.json()["usage"]["completion_tokens"] == 700 for r in results)
        assert gauge(client, node.url, "vllm:num_preemptions_total") > 0


def test_a_repeated_prompt_prefix_hits_the_prefix_cache(fleet: BackgroundFleet, client: httpx.Client) -> None:
    node = fleet.add_node(profile="h100")
    system = "You are a helpful assistant. " * 100  # 2,900 characters shared
    first = complete(client, node.url, system + "question one")
    second = complete(client, node.url, system + "question two")
    assert prefill_step(second) < prefill_step(first)
    m = parse_prometheus(client.get(f"{node.url}/metrics").text)
    assert m["vllm:prefix_cache_hits_total"][0][1] > 0
