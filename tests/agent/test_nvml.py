"""NvmlCollector against a fake pynvml module with the real module's error classes and call shapes."""

from __future__ import annotations

import sys
import types
from dataclasses import dataclass, field
from typing import Any

import pynvml
import pytest

from agents.catalogue import GPU_NAMES
from agents.collectors.nvml import NvmlCollector

NOT_SUPPORTED, GPU_IS_LOST, TIMEOUT, NO_PERMISSION, FUNCTION_NOT_FOUND = 3, 15, 10, 4, 13


class NVMLError(Exception):
    """Mirrors pynvml.NVMLError: NVMLError(code) builds the subclass registered for that code."""

    _by_code: dict[int, type[NVMLError]] = {}

    def __new__(cls, value: int) -> NVMLError:
        if cls is NVMLError:
            cls = NVMLError._by_code.get(value, cls)
        obj = Exception.__new__(cls)
        obj.value = value
        return obj

    def __init__(self, value: int) -> None:
        super().__init__(value)


def _error_class(name: str, code: int) -> type[NVMLError]:
    cls = type(name, (NVMLError,), {"__new__": lambda c, *a: NVMLError.__new__(c, code)})
    NVMLError._by_code[code] = cls
    return cls


NVMLError_NotSupported = _error_class("NVMLError_NotSupported", NOT_SUPPORTED)
NVMLError_GpuIsLost = _error_class("NVMLError_GpuIsLost", GPU_IS_LOST)
NVMLError_Timeout = _error_class("NVMLError_Timeout", TIMEOUT)
NVMLError_NoPermission = _error_class("NVMLError_NoPermission", NO_PERMISSION)
NVMLError_FunctionNotFound = _error_class("NVMLError_FunctionNotFound", FUNCTION_NOT_FOUND)


def test_fake_error_classes_match_the_real_pynvml() -> None:
    for name in ("NVMLError_NotSupported", "NVMLError_GpuIsLost", "NVMLError_Timeout", "NVMLError_NoPermission"):
        real = getattr(pynvml, name)
        assert issubclass(real, pynvml.NVMLError)
        assert isinstance(pynvml.NVMLError(real(0).value), real)  # the code maps back to the subclass
        fake = globals()[name]
        assert issubclass(fake, NVMLError)
        assert isinstance(NVMLError(fake(0).value), fake)
        assert fake(0).value == real(0).value


@dataclass
class FakeGpu:
    uuid: str
    name: str = "NVIDIA H100 80GB HBM3"
    unsupported: set[str] = field(default_factory=set)  # function names (or "field:<id>") raising NotSupported
    lost: bool = False
    lose_on: str | None = None  # the GPU falls off the bus when this function is called
    handle_fails: bool = False
    util: int = 97
    mem_util: int = 41
    power_mw: int = 612_345
    limit_mw: int = 700_000
    constraints: tuple[int, int] = (200_000, 700_000)
    energy_mj: int = 5_000_000
    nvlink_tx_kib: int = 1_000
    nvlink_rx_kib: int = 2_000
    gpm_sm: float = 81.5


class FakeNvml:
    """Just enough of pynvml for NvmlCollector, with the constants taken from the real module."""

    def __init__(self, gpus: list[FakeGpu], events: bool = True, gpm: bool = True) -> None:
        self.gpus = gpus
        self.handles = [types.SimpleNamespace(gpu=g) for g in gpus]
        self.events_supported = events
        self.gpm_supported = gpm
        self.pending_events: list[Any] = []
        self.set_limits: list[tuple[int, int]] = []
        self.calls: list[tuple[str, str]] = []  # (uuid, function)
        self.shutdown = False
        for name in dir(pynvml):
            if name.startswith(("NVML_", "nvmlEventType", "nvmlMemory_v2", "NVML_GPM")):
                setattr(self, name, getattr(pynvml, name))
        self.NVMLError = NVMLError
        self.NVMLError_NotSupported = NVMLError_NotSupported
        self.NVMLError_GpuIsLost = NVMLError_GpuIsLost
        self.NVMLError_Timeout = NVMLError_Timeout

    # -- helpers --
    def _gpu(self, handle: Any, fn: str) -> FakeGpu:
        g: FakeGpu = handle.gpu
        self.calls.append((g.uuid, fn))
        if g.lose_on == fn:
            g.lost = True
        if g.lost:
            raise NVMLError(GPU_IS_LOST)
        if fn in g.unsupported:
            raise NVMLError(NOT_SUPPORTED)
        return g

    # -- module functions --
    def nvmlInit(self) -> None:
        pass

    def nvmlShutdown(self) -> None:
        self.shutdown = True

    def nvmlDeviceGetCount(self) -> int:
        return len(self.gpus)

    def nvmlDeviceGetHandleByIndex(self, i: int) -> Any:
        if self.gpus[i].handle_fails:
            raise NVMLError(GPU_IS_LOST)
        return self.handles[i]

    def nvmlDeviceGetUUID(self, h: Any) -> str:
        return self._gpu(h, "nvmlDeviceGetUUID").uuid

    def nvmlDeviceGetName(self, h: Any) -> bytes:
        return self._gpu(h, "nvmlDeviceGetName").name.encode()  # old bindings return bytes

    def nvmlDeviceGetUtilizationRates(self, h: Any) -> Any:
        g = self._gpu(h, "nvmlDeviceGetUtilizationRates")
        return types.SimpleNamespace(gpu=g.util, memory=g.mem_util)

    def nvmlDeviceGetMemoryInfo(self, h: Any, version: int | None = None) -> Any:
        g = self._gpu(h, "nvmlDeviceGetMemoryInfo")
        if version is not None:
            if "nvmlDeviceGetMemoryInfo_v2" in g.unsupported:
                raise NVMLError(FUNCTION_NOT_FOUND)
            return types.SimpleNamespace(total=80 * 2**30, reserved=2**29, free=20 * 2**30, used=60 * 2**30 - 2**29)
        return types.SimpleNamespace(total=80 * 2**30, free=20 * 2**30, used=60 * 2**30)

    def nvmlDeviceGetTemperature(self, h: Any, sensor: int) -> int:
        assert sensor == pynvml.NVML_TEMPERATURE_GPU
        self._gpu(h, "nvmlDeviceGetTemperature")
        return 67

    def nvmlDeviceGetPowerUsage(self, h: Any) -> int:
        return self._gpu(h, "nvmlDeviceGetPowerUsage").power_mw

    def nvmlDeviceGetEnforcedPowerLimit(self, h: Any) -> int:
        return self._gpu(h, "nvmlDeviceGetEnforcedPowerLimit").limit_mw

    def nvmlDeviceGetTotalEnergyConsumption(self, h: Any) -> int:
        return self._gpu(h, "nvmlDeviceGetTotalEnergyConsumption").energy_mj

    def nvmlDeviceGetClockInfo(self, h: Any, clock: int) -> int:
        self._gpu(h, "nvmlDeviceGetClockInfo")
        return {pynvml.NVML_CLOCK_SM: 1980, pynvml.NVML_CLOCK_MEM: 2619}[clock]

    def nvmlDeviceGetFanSpeed(self, h: Any) -> int:
        self._gpu(h, "nvmlDeviceGetFanSpeed")
        return 45

    def nvmlDeviceGetPerformanceState(self, h: Any) -> int:
        self._gpu(h, "nvmlDeviceGetPerformanceState")
        return 0

    def nvmlDeviceGetPcieThroughput(self, h: Any, counter: int) -> int:
        self._gpu(h, "nvmlDeviceGetPcieThroughput")
        return {pynvml.NVML_PCIE_UTIL_TX_BYTES: 1000, pynvml.NVML_PCIE_UTIL_RX_BYTES: 3000}[counter]

    def nvmlDeviceGetPcieReplayCounter(self, h: Any) -> int:
        self._gpu(h, "nvmlDeviceGetPcieReplayCounter")
        return 9

    def nvmlDeviceGetEncoderUtilization(self, h: Any) -> list[int]:
        self._gpu(h, "nvmlDeviceGetEncoderUtilization")
        return [3, 167000]

    def nvmlDeviceGetDecoderUtilization(self, h: Any) -> list[int]:
        self._gpu(h, "nvmlDeviceGetDecoderUtilization")
        return [4, 167000]

    def nvmlDeviceGetTotalEccErrors(self, h: Any, error_type: int, counter: int) -> int:
        self._gpu(h, "nvmlDeviceGetTotalEccErrors")
        assert counter == pynvml.NVML_VOLATILE_ECC
        return {pynvml.NVML_MEMORY_ERROR_TYPE_CORRECTED: 11, pynvml.NVML_MEMORY_ERROR_TYPE_UNCORRECTED: 1}[error_type]

    def nvmlDeviceGetRemappedRows(self, h: Any) -> tuple[int, int, int, int]:
        self._gpu(h, "nvmlDeviceGetRemappedRows")
        return (2, 1, 1, 0)

    def nvmlDeviceGetCurrentClocksEventReasons(self, h: Any) -> int:
        g = self._gpu(h, "nvmlDeviceGetCurrentClocksEventReasons")
        if "events_name" in g.unsupported:
            raise NVMLError(FUNCTION_NOT_FOUND)  # a driver older than the bindings
        return 0x4

    def nvmlDeviceGetCurrentClocksThrottleReasons(self, h: Any) -> int:
        self._gpu(h, "nvmlDeviceGetCurrentClocksThrottleReasons")
        return 0x44

    def nvmlDeviceGetComputeRunningProcesses(self, h: Any) -> list[Any]:
        self._gpu(h, "nvmlDeviceGetComputeRunningProcesses")
        return [object(), object()]

    def nvmlDeviceGetFieldValues(self, h: Any, ids: list[tuple[int, int]]) -> list[Any]:
        g = self._gpu(h, "nvmlDeviceGetFieldValues")
        values = {
            pynvml.NVML_FI_DEV_MEMORY_TEMP: (1, 71),
            pynvml.NVML_FI_DEV_TOTAL_ENERGY_CONSUMPTION: (3, g.energy_mj),
            pynvml.NVML_FI_DEV_PCIE_REPLAY_COUNTER: (3, 7),
            pynvml.NVML_FI_DEV_ECC_SBE_VOL_TOTAL: (3, 5),
            pynvml.NVML_FI_DEV_ECC_DBE_VOL_TOTAL: (3, 0),
            pynvml.NVML_FI_DEV_NVLINK_THROUGHPUT_DATA_TX: (3, g.nvlink_tx_kib),
            pynvml.NVML_FI_DEV_NVLINK_THROUGHPUT_DATA_RX: (3, g.nvlink_rx_kib),
        }
        out = []
        for field_id, scope in ids:
            vtype, value = values[field_id]
            if field_id in (pynvml.NVML_FI_DEV_NVLINK_THROUGHPUT_DATA_TX, pynvml.NVML_FI_DEV_NVLINK_THROUGHPUT_DATA_RX):
                assert scope == 0xFFFFFFFF  # summed over all links
            ret = NOT_SUPPORTED if f"field:{field_id}" in g.unsupported else pynvml.NVML_SUCCESS
            member = {1: "uiVal", 3: "ullVal"}[vtype]
            out.append(types.SimpleNamespace(fieldId=field_id, scopeId=scope, nvmlReturn=ret, valueType=vtype,
                                             value=types.SimpleNamespace(**{member: value})))
        return out

    # GPM
    def nvmlGpmQueryDeviceSupport(self, h: Any) -> Any:
        self._gpu(h, "nvmlGpmQueryDeviceSupport")
        return types.SimpleNamespace(version=1, isSupportedDevice=int(self.gpm_supported))

    def nvmlGpmSampleAlloc(self) -> Any:
        return types.SimpleNamespace(gpu=None)

    def nvmlGpmSampleFree(self, sample: Any) -> None:
        pass

    def nvmlGpmSampleGet(self, h: Any, sample: Any) -> Any:
        sample.gpu = self._gpu(h, "nvmlGpmSampleGet")
        return sample

    class c_nvmlGpmMetricsGet_t:  # noqa: N801 - the real struct's name
        def __init__(self) -> None:
            self.version = 0
            self.numMetrics = 0
            self.sample1: Any = None
            self.sample2: Any = None
            self.metrics = [types.SimpleNamespace(metricId=0, nvmlReturn=0, value=0.0) for _ in range(8)]

    def nvmlGpmMetricsGet(self, request: Any) -> Any:
        assert request.version == pynvml.NVML_GPM_METRICS_GET_VERSION and request.sample1 is not request.sample2
        g = request.sample2.gpu
        values = {pynvml.NVML_GPM_METRIC_SM_UTIL: g.gpm_sm, pynvml.NVML_GPM_METRIC_ANY_TENSOR_UTIL: 40.25,
                  pynvml.NVML_GPM_METRIC_DRAM_BW_UTIL: 55.0}
        for m in request.metrics[: request.numMetrics]:
            m.value = values[m.metricId]
            m.nvmlReturn = NOT_SUPPORTED if m.metricId == pynvml.NVML_GPM_METRIC_DRAM_BW_UTIL and g.gpm_sm < 0 else 0
        return request

    # events
    def nvmlEventSetCreate(self) -> Any:
        if not self.events_supported:
            raise NVMLError(NOT_SUPPORTED)
        return "event-set"

    def nvmlDeviceRegisterEvents(self, h: Any, types_: int, event_set: Any) -> None:
        self._gpu(h, "nvmlDeviceRegisterEvents")
        assert types_ == pynvml.nvmlEventTypeXidCriticalError

    def nvmlEventSetWait(self, event_set: Any, timeout_ms: int) -> Any:
        assert timeout_ms == 0
        if not self.pending_events:
            raise NVMLError(TIMEOUT)
        return self.pending_events.pop(0)

    def nvmlEventSetFree(self, event_set: Any) -> None:
        pass

    def xid(self, index: int, code: int) -> None:
        self.pending_events.append(types.SimpleNamespace(device=self.handles[index],
                                                         eventType=pynvml.nvmlEventTypeXidCriticalError,
                                                         eventData=code))

    # power
    def nvmlDeviceGetPowerManagementLimitConstraints(self, h: Any) -> tuple[int, int]:
        return self._gpu(h, "nvmlDeviceGetPowerManagementLimitConstraints").constraints

    def nvmlDeviceSetPowerManagementLimit(self, h: Any, milliwatts: int) -> None:
        g = self._gpu(h, "nvmlDeviceSetPowerManagementLimit")
        self.set_limits.append((self.gpus.index(g), milliwatts))
        g.limit_mw = milliwatts


class Clock:
    def __init__(self) -> None:
        self.t = 1000.0

    def __call__(self) -> float:
        return self.t


def _gpus() -> list[FakeGpu]:
    return [
        FakeGpu("GPU-aaaa"),
        FakeGpu("GPU-bbbb", unsupported={"nvmlDeviceGetFanSpeed", "nvmlDeviceGetEncoderUtilization",
                                         "nvmlDeviceGetTotalEccErrors", "nvmlDeviceGetRemappedRows",
                                         f"field:{pynvml.NVML_FI_DEV_MEMORY_TEMP}",
                                         f"field:{pynvml.NVML_FI_DEV_ECC_SBE_VOL_TOTAL}",
                                         f"field:{pynvml.NVML_FI_DEV_ECC_DBE_VOL_TOTAL}",
                                         f"field:{pynvml.NVML_FI_DEV_NVLINK_THROUGHPUT_DATA_TX}",
                                         f"field:{pynvml.NVML_FI_DEV_NVLINK_THROUGHPUT_DATA_RX}",
                                         "nvmlDeviceGetMemoryInfo_v2", "events_name"}),
        FakeGpu("GPU-cccc"),
    ]


def test_reads_every_metric_with_units_converted() -> None:
    clock = Clock()
    nvml = FakeNvml(_gpus())
    c = NvmlCollector(nvml, clock=clock)
    first = c.collect()
    assert [g["index"] for g in first] == [0, 1, 2]
    g0 = first[0]
    assert set(g0) == GPU_NAMES | {"index", "uuid", "name"}
    assert g0["uuid"] == "GPU-aaaa" and g0["name"] == "NVIDIA H100 80GB HBM3"
    assert g0["gpu_util_pct"] == 97 and g0["mem_copy_util_pct"] == 41
    assert g0["fb_total_bytes"] == 80 * 2**30 and g0["fb_reserved_bytes"] == 2**29
    assert g0["fb_used_bytes"] + g0["fb_free_bytes"] <= g0["fb_total_bytes"]
    assert g0["temp_c"] == 67 and g0["mem_temp_c"] == 71
    assert g0["power_w"] == pytest.approx(612.345) and g0["power_limit_w"] == pytest.approx(700.0)
    assert g0["energy_j"] == pytest.approx(5000.0)
    assert (g0["sm_clock_mhz"], g0["mem_clock_mhz"], g0["fan_pct"], g0["pstate"]) == (1980, 2619, 45, 0)
    assert g0["pcie_tx_bytes_s"] == 1000 * 1024 and g0["pcie_rx_bytes_s"] == 3000 * 1024
    assert g0["pcie_replay_total"] == 7  # from the batched field read, not the fallback call
    assert (g0["enc_util_pct"], g0["dec_util_pct"]) == (3, 4)
    assert (g0["ecc_corrected_total"], g0["ecc_uncorrected_total"]) == (5, 0)
    assert (g0["remapped_rows_uncorrectable"], g0["row_remap_pending"]) == (1, 1)
    assert g0["clocks_event_reasons"] == 0x4
    assert g0["process_count"] == 2
    assert g0["xid_count"] == 0 and g0["xid_last"] is None
    # Rates and GPM ratios need two readings.
    assert g0["nvlink_tx_bytes_s"] is None and g0["sm_active_pct"] is None
    assert ("GPU-aaaa", "nvmlDeviceGetPcieReplayCounter") not in nvml.calls

    clock.t += 2.0
    nvml.gpus[0].nvlink_tx_kib += 4_000
    nvml.gpus[0].nvlink_rx_kib += 1_000
    g0 = c.collect()[0]
    assert g0["nvlink_tx_bytes_s"] == pytest.approx(4_000 * 1024 / 2.0)
    assert g0["nvlink_rx_bytes_s"] == pytest.approx(1_000 * 1024 / 2.0)
    assert (g0["sm_active_pct"], g0["tensor_active_pct"], g0["dram_active_pct"]) == (81.5, 40.25, 55.0)


def test_unsupported_metrics_are_none_and_the_rest_are_numbers() -> None:
    c = NvmlCollector(FakeNvml(_gpus()), clock=Clock())
    g1 = c.collect()[1]
    for name in ("fan_pct", "enc_util_pct", "mem_temp_c", "ecc_corrected_total", "ecc_uncorrected_total",
                 "remapped_rows_uncorrectable", "row_remap_pending", "fb_reserved_bytes"):
        assert g1[name] is None, name
    # Still real numbers: the unsupported calls did not take their neighbours down.
    assert g1["gpu_util_pct"] == 97 and g1["dec_util_pct"] == 4 and g1["fb_total_bytes"] == 80 * 2**30
    assert g1["fb_used_bytes"] == 60 * 2**30  # memory info v1 when v2 is missing
    assert g1["clocks_event_reasons"] == 0x44  # fell back to the pre-535 name
    g1 = c.collect()[1]
    assert g1["nvlink_tx_bytes_s"] is None and g1["nvlink_rx_bytes_s"] is None  # no NVLink: None, never 0


def test_a_lost_gpu_stays_listed_with_nulls() -> None:
    gpus = _gpus()
    nvml = FakeNvml(gpus)
    c = NvmlCollector(nvml, clock=Clock())
    assert c.collect()[2]["gpu_util_pct"] == 97
    gpus[2].lose_on = "nvmlDeviceGetPowerUsage"  # falls off the bus half-way through a reading
    for _ in range(2):
        out = c.collect()
        assert len(out) == 3
        lost = out[2]
        assert (lost["index"], lost["uuid"], lost["name"]) == (2, "GPU-cccc", "NVIDIA H100 80GB HBM3")
        assert all(lost[name] is None for name in GPU_NAMES)
        assert out[0]["gpu_util_pct"] == 97 and out[1]["gpu_util_pct"] == 97
    before = len(nvml.calls)
    c.collect()
    assert not [fn for uuid, fn in nvml.calls[before:] if uuid == "GPU-cccc"]  # a lost GPU is not polled again


def test_a_gpu_whose_handle_cannot_be_fetched_is_listed_with_nulls() -> None:
    gpus = _gpus()
    gpus[1].handle_fails = True
    out = NvmlCollector(FakeNvml(gpus), clock=Clock()).collect()
    assert [g["index"] for g in out] == [0, 1, 2]
    assert out[1]["uuid"] is None and all(out[1][n] is None for n in GPU_NAMES)
    assert out[0]["gpu_util_pct"] == 97


def test_xid_events_are_counted_per_interval_and_the_last_code_kept() -> None:
    nvml = FakeNvml(_gpus())
    c = NvmlCollector(nvml, clock=Clock())
    nvml.xid(0, 79)
    nvml.xid(0, 48)
    nvml.xid(2, 13)
    out = c.collect()
    assert (out[0]["xid_count"], out[0]["xid_last"]) == (2, 48)
    assert (out[1]["xid_count"], out[1]["xid_last"]) == (0, None)
    assert (out[2]["xid_count"], out[2]["xid_last"]) == (1, 13)
    out = c.collect()
    assert (out[0]["xid_count"], out[0]["xid_last"]) == (0, 48)  # an event count, not a stuck gauge


def test_xid_metrics_are_none_when_the_event_api_is_unsupported() -> None:
    out = NvmlCollector(FakeNvml(_gpus(), events=False), clock=Clock()).collect()
    assert all(g["xid_count"] is None and g["xid_last"] is None for g in out)


def test_gpm_metrics_are_none_without_gpm() -> None:
    c = NvmlCollector(FakeNvml(_gpus(), gpm=False), clock=Clock())
    c.collect()
    out = c.collect()
    assert all(g[n] is None for g in out for n in ("sm_active_pct", "tensor_active_pct", "dram_active_pct"))


def test_set_power_limit_clamps_to_the_board_constraints() -> None:
    nvml = FakeNvml(_gpus())
    c = NvmlCollector(nvml, clock=Clock())
    assert c.set_power_limit(0, 450.5) == 450.5
    assert c.set_power_limit(1, 1000) == 700.0
    assert c.set_power_limit(2, 50) == 200.0
    assert nvml.set_limits == [(0, 450_500), (1, 700_000), (2, 200_000)]
    assert c.collect()[0]["power_limit_w"] == pytest.approx(450.5)
    assert c.set_power_limit(7, 300) is None  # no such GPU


def test_set_power_limit_reports_failure_as_none() -> None:
    gpus = _gpus()
    gpus[0].unsupported.add("nvmlDeviceSetPowerManagementLimit")
    assert NvmlCollector(FakeNvml(gpus), clock=Clock()).set_power_limit(0, 300) is None


def test_close_shuts_nvml_down() -> None:
    nvml = FakeNvml(_gpus())
    c = NvmlCollector(nvml, clock=Clock())
    c.collect()
    c.close()
    assert nvml.shutdown


def test_the_agent_package_never_imports_django() -> None:
    import subprocess

    code = ("import sys, agents.cli, agents.push, agents.spool, agents.collectors.nvml, agents.collectors.host, "
            "agents.collectors.inference, agents.collectors.sim; "
            "bad = [m for m in sys.modules if m.split('.')[0] in ('django', 'dashboard', 'control')]; "
            "assert not bad, bad")
    subprocess.run([sys.executable, "-c", code], check=True)
