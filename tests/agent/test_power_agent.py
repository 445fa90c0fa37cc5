"""The agent's side of power capping: caps from `desired` applied through each backend (the simulator, the fleet's
virtual NVML, NVML itself through the fake pynvml of test_nvml.py), reported in `applied`, and lifted again.

The server is the scripted stand-in of test_push.py; time is the fake clock there.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from agents.collectors.base import CompositeBackend
from agents.collectors.nvml import NvmlCollector
from agents.collectors.sim import SimBackend
from agents.push import Pusher
from agents.sim.engine import Engine
from agents.sim.profiles import get as profile
from agents.sim.vhost import VirtualHost
from agents.sim.vnvml import VirtualNvml
from tests.agent.test_nvml import NOT_SUPPORTED, Clock, FakeGpu, FakeNvml, NVMLError
from tests.agent.test_push import IngestServer


class Recording(SimBackend):
    """The simulator, remembering every power-limit call the agent makes."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.calls: list[tuple[int, float]] = []

    def set_power_limit(self, index: int, watts: float) -> float | None:
        self.calls.append((index, watts))
        return super().set_power_limit(index, watts)


def limits(doc: dict[str, Any]) -> list[float]:
    """The enforced limit each GPU reports in the newest sample of a pushed document."""
    return [g["power_limit_w"] for g in doc["samples"][-1]["gpus"]]


def push(pusher: Pusher, server: IngestServer, power: dict[str, Any] | None) -> dict[str, Any]:
    """Answer the next push with `power` as desired.power_limit_w, push twice (the second carries what the first
    answer made the agent do) and return the second pushed document."""
    server.desired = {"interval_s": 5, "state": "active"}
    if power is not None:
        server.desired["power_limit_w"] = power
    assert pusher.once()
    assert pusher.once()
    return server.requests[-1]["doc"]


def test_sim_caps_are_applied_once_and_lifted_when_uncapped(server: IngestServer,
                                                            make: Callable[..., Pusher]) -> None:
    sim = Recording(gpus=2, seed=1)
    pusher = make(server.url, backend=sim)
    doc = push(pusher, server, {"0": 300, "1": 450.5})
    assert sim.calls == [(0, 300.0), (1, 450.5)]
    assert doc["applied"] == {"interval_s": 5, "power_limit_w": {"0": 300.0, "1": 450.5},
                              "power_asked_w": {"0": 300.0, "1": 450.5},
                              "power_default_w": {"0": 700.0, "1": 700.0}}
    assert limits(doc) == [300.0, 450.5]

    # GPU 1 left out of the wish: it goes back to its default; GPU 0 keeps its cap and sees no second NVML call.
    doc = push(pusher, server, {"0": 300})
    assert sim.calls[2:] == [(1, 700.0)]
    assert doc["applied"]["power_limit_w"] == {"0": 300.0} and doc["applied"]["power_asked_w"] == {"0": 300.0}
    assert limits(doc) == [300.0, 700.0]

    # An explicit null uncaps too; once restored, repeating the wish costs nothing.
    doc = push(pusher, server, {"0": None})
    doc = push(pusher, server, {})
    assert sim.calls[3:] == [(0, 700.0)]
    assert doc["applied"]["power_limit_w"] == {} and limits(doc) == [700.0, 700.0]


def test_a_card_the_controller_never_capped_is_never_touched(server: IngestServer,
                                                            make: Callable[..., Pusher]) -> None:
    sim = Recording(gpus=2, seed=2)
    pusher = make(server.url, backend=sim)
    push(pusher, server, {})
    push(pusher, server, {"0": None, "1": None})
    push(pusher, server, None)  # an answer without a power block says nothing about power
    assert sim.calls == []


def test_a_nonsense_value_leaves_the_cap_as_it_is(server: IngestServer, make: Callable[..., Pusher],
                                                  caplog: pytest.LogCaptureFixture) -> None:
    sim = Recording(gpus=2, seed=3)
    pusher = make(server.url, backend=sim)
    push(pusher, server, {"0": 250})
    doc = push(pusher, server, {"0": "lots", "1": -5, "999": 300, "x": 1})
    assert sim.calls == [(0, 250.0)]  # neither lifted (GPU 0) nor set (GPU 1, no GPU 999)
    assert limits(doc) == [250.0, 700.0]
    assert "ignoring desired power limit '0': 'lots'" in caplog.text


def test_a_restarted_agent_still_lifts_the_cap_it_set(server: IngestServer, make: Callable[..., Pusher],
                                                      tmp_path: Path) -> None:
    sim = Recording(gpus=2, seed=4)  # the board keeps its limit across an agent restart, as a real one does
    first = make(server.url, backend=sim)
    push(first, server, {"1": 320})
    first.close()
    assert json.loads((tmp_path / "state" / "power-capped.json").read_text()) == [1]

    again = make(server.url, backend=sim)
    doc = push(again, server, {})
    assert sim.calls == [(1, 320.0), (1, 700.0)]
    assert limits(doc) == [700.0, 700.0]
    assert json.loads((tmp_path / "state" / "power-capped.json").read_text()) == []


def test_a_failed_restore_keeps_reporting_the_cap_and_is_not_retried_on_every_push(
        server: IngestServer, make: Callable[..., Pusher], caplog: pytest.LogCaptureFixture) -> None:
    class NoDefault(Recording):
        def default_power_limit(self, index: int) -> float | None:
            return None

    sim = NoDefault(gpus=1, seed=5)
    pusher = make(server.url, backend=sim)
    push(pusher, server, {"0": 300})
    doc = push(pusher, server, {})
    push(pusher, server, {})
    assert sim.calls == [(0, 300.0)]
    assert doc["applied"]["power_limit_w"] == {"0": 300.0}  # the truth: the card is still capped
    assert doc["applied"]["power_default_w"] == {}
    assert caplog.text.count("could not restore its default power limit (the default is unknown)") == 1
    push(pusher, server, {"0": 280})  # a new wish is acted on again
    assert sim.calls == [(0, 300.0), (0, 280.0)]


def test_virtual_nvml_reports_its_board_default_and_clamps(server: IngestServer,
                                                           make: Callable[..., Pusher]) -> None:
    a100 = profile("a100")
    engine = Engine(a100)
    gpus = VirtualNvml(a100, engine, gpus=2, seed=6)
    assert [gpus.default_power_limit(i) for i in (0, 1, 2)] == [400.0, 400.0, None]
    pusher = make(server.url, backend=CompositeBackend(gpus, VirtualHost(engine, seed=6), None))
    doc = push(pusher, server, {"0": 50, "1": 300})
    assert doc["applied"]["power_limit_w"] == {"0": 100.0, "1": 300.0}  # 50 W is below the board's 100 W floor
    assert doc["applied"]["power_asked_w"] == {"0": 50.0, "1": 300.0}
    assert doc["applied"]["power_default_w"] == {"0": 400.0, "1": 400.0}
    doc = push(pusher, server, {})
    assert [g.power_limit_w for g in gpus.gpus] == [400.0, 400.0] and limits(doc) == [400.0, 400.0]


# -- NVML ----------------------------------------------------------------------------------------------------

class DefaultsNvml(FakeNvml):
    """The fake pynvml with nvmlDeviceGetPowerManagementDefaultLimit (milliwatts, like the real call)."""

    default_mw = 700_000

    def nvmlDeviceGetPowerManagementDefaultLimit(self, h: Any) -> int:
        self._gpu(h, "nvmlDeviceGetPowerManagementDefaultLimit")
        return self.default_mw


def test_nvml_default_power_limit_is_read_in_watts_and_null_when_unknown() -> None:
    gpus = [FakeGpu("GPU-0"), FakeGpu("GPU-1", unsupported={"nvmlDeviceGetPowerManagementDefaultLimit"}),
            FakeGpu("GPU-2", lost=True)]
    nvml = DefaultsNvml(gpus)
    nvml.default_mw = 612_500
    c = NvmlCollector(nvml, clock=Clock())
    assert c.default_power_limit(0) == 612.5
    assert c.default_power_limit(1) is None  # NotSupported
    assert c.default_power_limit(2) is None  # lost
    assert c.default_power_limit(3) is None  # no such GPU
    assert NvmlCollector(FakeNvml([FakeGpu("GPU-0")]), clock=Clock()).default_power_limit(0) is None  # old bindings


def test_nvml_cap_and_restore_through_the_agent(server: IngestServer, make: Callable[..., Pusher]) -> None:
    class Host:
        def collect(self) -> dict[str, Any]:
            return {}

    nvml = DefaultsNvml([FakeGpu("GPU-0"), FakeGpu("GPU-1")])
    pusher = make(server.url, backend=CompositeBackend(NvmlCollector(nvml, clock=Clock()), Host(), None))
    doc = push(pusher, server, {"0": 560})
    assert doc["applied"]["power_default_w"] == {"0": 700.0, "1": 700.0}
    assert doc["applied"]["power_limit_w"] == {"0": 560.0} and limits(doc) == [560.0, 700.0]
    doc = push(pusher, server, {})
    assert nvml.set_limits == [(0, 560_000), (0, 700_000)]  # GPU 1 was never capped, so never set
    assert doc["applied"]["power_limit_w"] == {} and limits(doc) == [700.0, 700.0]


def test_nvml_refusing_the_restore_is_reported(server: IngestServer, make: Callable[..., Pusher]) -> None:
    class Host:
        def collect(self) -> dict[str, Any]:
            return {}

    class NoPermission(DefaultsNvml):
        def nvmlDeviceSetPowerManagementLimit(self, h: Any, milliwatts: int) -> None:
            if milliwatts == self.default_mw:
                raise NVMLError(NOT_SUPPORTED)
            super().nvmlDeviceSetPowerManagementLimit(h, milliwatts)

    nvml = NoPermission([FakeGpu("GPU-0")])
    pusher = make(server.url, backend=CompositeBackend(NvmlCollector(nvml, clock=Clock()), Host(), None))
    push(pusher, server, {"0": 500})
    doc = push(pusher, server, {})
    assert doc["applied"]["power_limit_w"] == {"0": 500.0} and limits(doc) == [500.0]
