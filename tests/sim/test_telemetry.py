"""What the agent reads from a sim node: the real scraper over HTTP gets every inference metric; the virtual NVML
follows the load, obeys power-limit constraints and reports every GPU catalogue metric (None where unsupported)."""

from __future__ import annotations

import time
from concurrent.futures import ThreadPoolExecutor

import httpx
import pytest

from agents.catalogue import GPU_METRICS, INFERENCE_METRICS
from agents.collectors.inference import InferenceScraper
from agents.push import normalize
from agents.sim.background import BackgroundFleet
from agents.sim.vnvml import REASON_IDLE, REASON_SW_POWER_CAP, PowerLimitError
from tests.sim.conftest import MODEL


def load(url: str, n: int, max_tokens: int = 60, prompt: str = "p") -> None:
    with httpx.Client(timeout=60.0, limits=httpx.Limits(max_connections=n)) as c, ThreadPoolExecutor(n) as pool:
        results = list(pool.map(lambda i: c.post(f"{url}/v1/completions", json={
            "model": MODEL, "prompt": f"{prompt} {i} " * 20, "max_tokens": max_tokens, "ignore_eos": True}),
            range(n)))
    assert all(r.status_code == 200 for r in results)


def test_the_real_agent_scraper_reads_every_inference_metric(fleet: BackgroundFleet) -> None:
    node = fleet.add_node(profile="a100")
    scraper = InferenceScraper(node.url)
    try:
        first = scraper.collect()
        assert first["requests_running"] == 0 and first["kv_cache_usage_pct"] == 0
        load(node.url, 8)
        load(node.url, 4, prompt="p")  # the same prompts again: prefix cache hits
        second = scraper.collect()
        assert scraper.models() == [MODEL]
    finally:
        scraper.close()
    missing = [m.name for m in INFERENCE_METRICS if second[m.name] is None]
    assert missing == []
    assert second["generation_tokens_s"] > 0 and second["prompt_tokens_s"] > 0
    assert 0 < second["ttft_p50_s"] <= second["ttft_p95_s"]
    assert second["itl_p50_s"] > 0 and second["e2e_p95_s"] > 0
    assert second["prefix_cache_hit_pct"] > 0
    assert second["request_errors_s"] == 0


def test_gpus_report_every_catalogue_metric_and_follow_the_load(fleet: BackgroundFleet) -> None:
    node = fleet.add_node(profile="h100")
    fleet.call(lambda f: f.node(node.name).gpu.collect())  # start the averaging window
    idle = fleet.call(lambda f: f.node(node.name).gpu.collect())
    load(node.url, 40, max_tokens=200)
    busy = fleet.call(lambda f: f.node(node.name).gpu.collect())
    for gpus in (idle, busy):
        assert len(gpus) == 2
        for g in gpus:
            assert set(g) == {"index", "uuid", "name"} | {m.name for m in GPU_METRICS}
            assert normalize({"gpus": [g]})["gpus"][0] == g  # every value is in range for the server as is
    for before, after in zip(idle, busy, strict=True):
        assert before["name"] == "NVIDIA H100 80GB HBM3" and before["uuid"] == after["uuid"]
        assert after["gpu_util_pct"] > before["gpu_util_pct"] + 10
        assert after["power_w"] > before["power_w"]
        assert after["energy_j"] > before["energy_j"]
        assert before["clocks_event_reasons"] & REASON_IDLE
        assert before["sm_active_pct"] is not None  # Hopper has GPM
        assert before["fan_pct"] is None  # SXM: no fan of its own


def test_fb_used_follows_the_kv_cache(fleet: BackgroundFleet) -> None:
    node = fleet.add_node(profile="l40s")
    idle = fleet.call(lambda f: f.node(node.name).gpu.collect()[0])
    fleet.slow_down(node.name, 50.0)
    with httpx.Client(timeout=60.0) as c, ThreadPoolExecutor(10) as pool:
        futures = [pool.submit(c.post, f"{node.url}/v1/completions", json={
            "model": MODEL, "prompt": f"{i}" * 8000, "max_tokens": 50, "ignore_eos": True}) for i in range(10)]
        deadline = time.monotonic() + 20
        while fleet.call(lambda f: f.node(node.name).kv_usage) == 0:
            assert time.monotonic() < deadline, "the requests never reached the engine"
            time.sleep(0.01)
        busy = fleet.call(lambda f: f.node(node.name).gpu.collect()[0])
        fleet.slow_down(node.name, 0.1)
        assert all(f.result(60).status_code == 200 for f in futures)
    assert busy["fb_used_bytes"] > idle["fb_used_bytes"]
    assert busy["fb_used_bytes"] + busy["fb_free_bytes"] == idle["fb_used_bytes"] + idle["fb_free_bytes"]
    # GDDR board without NVLink or GPM: those read None, never 0.
    assert idle["mem_temp_c"] is None and idle["nvlink_tx_bytes_s"] is None and idle["tensor_active_pct"] is None


def test_power_limit_is_applied_inside_the_constraints_and_refused_outside(fleet: BackgroundFleet) -> None:
    node = fleet.add_node(profile="a100")

    def gpu0() -> dict[str, object]:
        return fleet.call(lambda f: f.node(node.name).gpu.collect()[0])

    assert gpu0()["power_limit_w"] == 400.0
    vnvml = fleet.call(lambda f: f.node(node.name).gpu)
    assert vnvml.constraints(0) == (100.0, 400.0)
    fleet.call(lambda f: vnvml.device_set_power_limit(0, 250.0))
    assert gpu0()["power_limit_w"] == 250.0
    for bad in (99.0, 401.0):
        with pytest.raises(PowerLimitError, match=r"outside this board's constraints \[100.0, 400.0\] W"):
            fleet.call(lambda f, w=bad: vnvml.device_set_power_limit(0, w))
        assert gpu0()["power_limit_w"] == 250.0  # unchanged
    # The agent's call clamps first, as the NVML collector does on a real card.
    assert fleet.call(lambda f: vnvml.set_power_limit(1, 50.0)) == 100.0
    assert fleet.call(lambda f: vnvml.set_power_limit(5, 300.0)) is None  # no GPU 5 on a 2-GPU node


def test_a_binding_power_cap_drops_the_clock_and_sets_the_reason_bit(fleet: BackgroundFleet) -> None:
    node = fleet.add_node(profile="h100")
    fleet.call(lambda f: f.node(node.name).gpu.set_power_limit(0, 200.0))
    fleet.call(lambda f: f.node(node.name).gpu.collect())
    load(node.url, 48, max_tokens=150)
    capped, free = fleet.call(lambda f: f.node(node.name).gpu.collect())
    assert capped["clocks_event_reasons"] & REASON_SW_POWER_CAP
    assert not free["clocks_event_reasons"] & REASON_SW_POWER_CAP
    assert capped["sm_clock_mhz"] < free["sm_clock_mhz"]
    assert capped["power_w"] <= 200.0 < free["power_w"]


def test_a_failed_server_blanks_inference_metrics_and_a_crash_frees_the_gpus(fleet: BackgroundFleet) -> None:
    from agents.sim.agent import NodeInference

    node = fleet.add_node(profile="h100")
    source = fleet.call(lambda f: NodeInference(f.node(node.name)))
    assert fleet.call(lambda f: source.collect())["requests_running"] == 0
    assert fleet.call(lambda f: source.models()) == [MODEL]

    fleet.fail(node.name, "hang")  # stuck, but still holding its GPUs
    assert set(fleet.call(lambda f: source.collect()).values()) == {None}
    assert fleet.call(lambda f: source.models()) is None
    gpu = fleet.call(lambda f: f.node(node.name).gpu.collect()[0])
    assert gpu["process_count"] == 1 and gpu["fb_used_bytes"] > 0

    fleet.fail(node.name, "refuse")  # crashed: no process, nothing on the GPUs
    gpu = fleet.call(lambda f: f.node(node.name).gpu.collect()[0])
    assert gpu["process_count"] == 0 and gpu["fb_used_bytes"] == 0 and gpu["gpu_util_pct"] == 0

    fleet.recover(node.name)
    assert fleet.call(lambda f: source.collect())["requests_waiting"] == 0
