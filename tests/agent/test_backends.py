"""Every backend produces every catalogue name; the simulated node's numbers hang together."""

from __future__ import annotations

import psutil
from hypothesis import given, settings
from hypothesis import strategies as st

from agents.catalogue import BY_NAME, GPU_NAMES, HOST_NAMES, INFERENCE_NAMES
from agents.collectors.base import Backend, CompositeBackend
from agents.collectors.host import HostCollector
from agents.collectors.nvml import NvmlCollector
from agents.collectors.sim import SimBackend
from agents.push import normalize
from tests.agent.test_nvml import Clock, FakeNvml, _gpus


def assert_complete(body: dict, gpus: int) -> None:
    assert set(body) == {"host", "gpus", "inference"}
    assert set(body["host"]) == HOST_NAMES
    assert set(body["inference"]) == INFERENCE_NAMES
    assert len(body["gpus"]) == gpus
    for i, g in enumerate(body["gpus"]):
        assert set(g) == GPU_NAMES | {"index", "uuid", "name"}
        assert g["index"] == i


def assert_in_range(body: dict) -> None:
    values = [*body["host"].items(), *body["inference"].items(), *(kv for g in body["gpus"] for kv in g.items())]
    for name, value in values:
        if name in BY_NAME and value is not None:
            m = BY_NAME[name]
            assert m.lo <= value <= m.hi, (name, value)
            assert not m.integer or isinstance(value, int), (name, value)


def test_sim_backend_is_complete_and_in_range() -> None:
    backend = SimBackend(gpus=8, seed=1)
    assert isinstance(backend, Backend)
    for _ in range(20):
        body = backend.collect()
        assert_complete(body, 8)
        assert_in_range(body)
    assert backend.models() is None


def test_nvml_backend_with_fake_module_is_complete() -> None:
    backend = CompositeBackend(NvmlCollector(FakeNvml(_gpus()), clock=Clock()), HostCollector(psutil), None)
    assert isinstance(backend, Backend)
    for _ in range(2):
        body = backend.collect()
        assert_complete(body, 3)
        assert all(v is None for v in body["inference"].values())
        assert_in_range(normalize(body))
    backend.close()


@settings(max_examples=30, deadline=None)
@given(seed=st.integers(0, 2**32), gpus=st.integers(1, 16), steps=st.integers(1, 60),
       cap=st.floats(100.0, 800.0))
def test_sim_numbers_are_consistent(seed: int, gpus: int, steps: int, cap: float) -> None:
    t = [0.0]
    sim = SimBackend(gpus=gpus, seed=seed, clock=lambda: t[0])
    applied = sim.set_power_limit(0, cap)
    assert applied is not None and 200.0 <= applied <= 700.0
    prev_energy = [0.0] * gpus
    for _ in range(steps):
        t[0] += 5.0
        body = sim.collect()
        assert_in_range(body)
        for g in body["gpus"]:
            assert g["fb_used_bytes"] + g["fb_free_bytes"] <= g["fb_total_bytes"]
            assert g["power_w"] <= g["power_limit_w"]
            assert g["energy_j"] >= prev_energy[g["index"]]
            prev_energy[g["index"]] = g["energy_j"]
        assert body["gpus"][0]["power_limit_w"] == applied
        inf = body["inference"]
        assert inf["ttft_p50_s"] <= inf["ttft_p95_s"]


def test_sim_temperature_follows_power() -> None:
    t = [0.0]
    hot = SimBackend(gpus=1, seed=3, clock=lambda: t[0])
    cool = SimBackend(gpus=1, seed=3, clock=lambda: t[0])
    cool.set_power_limit(0, 200)
    for _ in range(60):
        t[0] += 5.0
        h, c = hot.collect()["gpus"][0], cool.collect()["gpus"][0]
    assert c["power_w"] <= h["power_w"] and c["temp_c"] <= h["temp_c"]


def test_sim_inference_can_come_from_a_real_source() -> None:
    class Source:
        def collect(self) -> dict:
            return {name: None for name in INFERENCE_NAMES} | {"requests_running": 3}

        def models(self) -> list[str] | None:
            return ["m"]

        def close(self) -> None:
            pass

    sim = SimBackend(gpus=2, seed=0, inference=Source())
    assert sim.collect()["inference"]["requests_running"] == 3
    assert sim.models() == ["m"]
    assert sim.set_power_limit(5, 300) is None
