"""GPU metrics from NVML (nvidia-ml-py, `import pynvml`).

The approach is nvitop's: every NVML call goes through one wrapper that turns NotSupported (or any other
NVMLError) into None, so a metric a GPU cannot report is null rather than 0 or a crash; a GPU that falls off the
bus stays listed, with nulls, under the index and UUID read while it was healthy; counters that NVML can return in
one call are read as a batch of field values.

The module object is injected so that tests (a fake pynvml) and the simulated fleet (a virtual NVML) exercise the
same code as a real GPU host.
"""

from __future__ import annotations

import ctypes
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from agents.catalogue import GPU_METRICS
from agents.collectors.base import Metrics, counter_rate, empty

log = logging.getLogger(__name__)

_ALL_LINKS = 0xFFFFFFFF  # scopeId asking NVML for an NVLink field summed over every link
_PSTATE_UNKNOWN = 32
_KIB = 1024  # NVML's PCIe and NVLink "KB" are KiB (nvidia-smi divides by 1024 to print MB)
_MAX_EVENTS_PER_DRAIN = 1024  # an XID storm must not stall the sample

# Read in one nvmlDeviceGetFieldValues call per GPU: (key, NVML constant name, scopeId). Constants missing from
# older bindings are skipped.
_FIELDS: tuple[tuple[str, str, int], ...] = (
    ("mem_temp_c", "NVML_FI_DEV_MEMORY_TEMP", 0),
    ("energy_mj", "NVML_FI_DEV_TOTAL_ENERGY_CONSUMPTION", 0),
    ("pcie_replay", "NVML_FI_DEV_PCIE_REPLAY_COUNTER", 0),
    ("ecc_sbe", "NVML_FI_DEV_ECC_SBE_VOL_TOTAL", 0),
    ("ecc_dbe", "NVML_FI_DEV_ECC_DBE_VOL_TOTAL", 0),
    ("nvlink_tx_kib", "NVML_FI_DEV_NVLINK_THROUGHPUT_DATA_TX", _ALL_LINKS),
    ("nvlink_rx_kib", "NVML_FI_DEV_NVLINK_THROUGHPUT_DATA_RX", _ALL_LINKS),
)

# nvmlFieldValue_t.valueType -> the member of its value union that holds the number.
_VALUE_MEMBERS = {0: "dVal", 1: "uiVal", 2: "ulVal", 3: "ullVal", 4: "sllVal", 5: "siVal", 6: "usVal"}

_GPM_METRICS: tuple[tuple[str, str], ...] = (
    ("sm_active_pct", "NVML_GPM_METRIC_SM_UTIL"),
    ("tensor_active_pct", "NVML_GPM_METRIC_ANY_TENSOR_UTIL"),
    ("dram_active_pct", "NVML_GPM_METRIC_DRAM_BW_UTIL"),
)


@dataclass
class _Gpu:
    index: int
    handle: Any = None
    uuid: str | None = None
    name: str | None = None
    lost: bool = False
    xid_registered: bool = False
    xid_seen: int = 0
    xid_last: int | None = None
    nvlink_prev: tuple[float, float | None, float | None] | None = None
    gpm_supported: bool | None = None
    gpm_samples: list[Any] = field(default_factory=list)
    gpm_primed: bool = False


def _text(value: Any) -> str | None:
    if value is None:
        return None
    return value.decode(errors="replace") if isinstance(value, bytes) else str(value)


def _scale(value: float | None, factor: float) -> float | None:
    return None if value is None else value * factor


def _from_milli(value: float | None) -> float | None:
    # Division rather than * 0.001, so that 6860788 mJ reads 6860.788 J and not 6860.7880000000005.
    return None if value is None else value / 1000


def _attr(obj: Any, name: str) -> Any:
    return None if obj is None else getattr(obj, name, None)


def _handle_key(handle: Any) -> Any:
    # pynvml hands out a fresh ctypes pointer object for the same device on every call (event data included), so
    # devices are matched by the address the pointer holds; other NVML implementations return stable objects.
    if isinstance(handle, ctypes._Pointer):
        return ctypes.cast(handle, ctypes.c_void_p).value
    return id(handle)


class NvmlCollector:
    """Reads every GPU_METRICS name for each GPU NVML reports.

    Raises the module's NVMLError from the constructor when NVML cannot be initialised (no driver): without it
    there is nothing to collect, and the caller says so.
    """

    def __init__(self, nvml: Any = None, clock: Callable[[], float] = time.monotonic) -> None:
        if nvml is None:
            import pynvml as nvml
        self._nvml = nvml
        self._clock = clock
        self._success = getattr(nvml, "NVML_SUCCESS", 0)
        self._lost_error = getattr(nvml, "NVMLError_GpuIsLost", None)
        nvml.nvmlInit()
        self._gpus = [_Gpu(i) for i in range(nvml.nvmlDeviceGetCount())]
        for gpu in self._gpus:
            self._attach(gpu)
        self._fields = [(key, getattr(nvml, const), scope) for key, const, scope in _FIELDS if hasattr(nvml, const)]
        self._by_handle = {_handle_key(g.handle): g for g in self._gpus if g.handle is not None}
        self._event_set = self._register_xid_events()

    # -- the one place NVML errors are handled -------------------------------------------------------------

    def _call(self, name: str, *args: Any, gpu: _Gpu | None = None) -> Any:
        """Call nvml.<name>(*args); None when the bindings lack it or NVML raises any NVMLError.

        NVML functions that return nothing give True on success, so that callers can tell success from failure.
        A GpuIsLost error marks `gpu` lost, and later calls for it return None without touching NVML.
        """
        if gpu is not None and gpu.lost:
            return None
        fn = getattr(self._nvml, name, None)
        if fn is None:
            return None
        try:
            result = fn(*args)
        except self._nvml.NVMLError as exc:
            log.debug("%s: %s", name, exc)
            if gpu is not None and self._lost_error is not None and isinstance(exc, self._lost_error):
                self._mark_lost(gpu)
            return None
        return True if result is None else result

    def _mark_lost(self, gpu: _Gpu) -> None:
        if not gpu.lost:
            log.warning("GPU %d (%s) is lost; reporting nulls for it until the driver is reloaded",
                        gpu.index, gpu.uuid or "uuid unknown")
        gpu.lost = True

    # -- setup --------------------------------------------------------------------------------------------

    def _attach(self, gpu: _Gpu) -> None:
        gpu.handle = self._call("nvmlDeviceGetHandleByIndex", gpu.index, gpu=gpu)
        if gpu.handle is None:
            self._mark_lost(gpu)
            return
        gpu.uuid = _text(self._call("nvmlDeviceGetUUID", gpu.handle, gpu=gpu))
        gpu.name = _text(self._call("nvmlDeviceGetName", gpu.handle, gpu=gpu))

    def _register_xid_events(self) -> Any:
        xid_type = getattr(self._nvml, "nvmlEventTypeXidCriticalError", None)
        event_set = self._call("nvmlEventSetCreate") if xid_type is not None else None
        if event_set is None:
            return None
        for gpu in self._gpus:
            if gpu.handle is not None:
                ok = self._call("nvmlDeviceRegisterEvents", gpu.handle, xid_type, event_set, gpu=gpu)
                gpu.xid_registered = ok is not None
        return event_set

    # -- collection ---------------------------------------------------------------------------------------

    def collect(self) -> list[Metrics]:
        self._drain_xids()
        now = self._clock()
        out = [self._read(gpu, now) for gpu in self._gpus]
        for gpu in self._gpus:
            gpu.xid_seen = 0
        return out

    def _drain_xids(self) -> None:
        if self._event_set is None:
            return
        xid_type = self._nvml.nvmlEventTypeXidCriticalError
        for _ in range(_MAX_EVENTS_PER_DRAIN):
            # Timeout 0 returns at once; NVML_ERROR_TIMEOUT (None here) means nothing is pending.
            data = self._call("nvmlEventSetWait", self._event_set, 0)
            if data is None:
                return
            gpu = self._by_handle.get(_handle_key(data.device))
            if gpu is not None and data.eventType & xid_type:
                gpu.xid_seen += 1
                gpu.xid_last = int(data.eventData)

    def _read(self, gpu: _Gpu, now: float) -> Metrics:
        out: Metrics = {"index": gpu.index, "uuid": gpu.uuid, "name": gpu.name, **empty(GPU_METRICS)}
        if gpu.lost:
            return out
        values = self._read_metrics(gpu, now)
        if gpu.lost:
            return out  # lost half-way: numbers read from a GPU that is going away are not to be trusted
        out.update(values)
        return out

    def _read_metrics(self, gpu: _Gpu, now: float) -> Metrics:
        nvml, h = self._nvml, gpu.handle

        def call(name: str, *args: Any) -> Any:
            return self._call(name, *args, gpu=gpu)

        fields = self._field_values(gpu)
        util = call("nvmlDeviceGetUtilizationRates", h)
        used, free, total, reserved = self._memory(gpu)
        pstate = call("nvmlDeviceGetPerformanceState", h)
        enc = call("nvmlDeviceGetEncoderUtilization", h)
        dec = call("nvmlDeviceGetDecoderUtilization", h)
        remapped = call("nvmlDeviceGetRemappedRows", h)
        reasons = call("nvmlDeviceGetCurrentClocksEventReasons", h)
        if reasons is None:  # drivers before 535 only know the older name
            reasons = call("nvmlDeviceGetCurrentClocksThrottleReasons", h)
        processes = call("nvmlDeviceGetComputeRunningProcesses", h)

        def field_or(key: str, fallback: str, *args: Any) -> Any:
            value = fields.get(key)
            return value if value is not None else call(fallback, h, *args)

        m: Metrics = {
            "gpu_util_pct": _attr(util, "gpu"),
            "mem_copy_util_pct": _attr(util, "memory"),
            "fb_used_bytes": used,
            "fb_free_bytes": free,
            "fb_total_bytes": total,
            "fb_reserved_bytes": reserved,
            "temp_c": call("nvmlDeviceGetTemperature", h, nvml.NVML_TEMPERATURE_GPU),
            "mem_temp_c": fields.get("mem_temp_c"),
            "power_w": _from_milli(call("nvmlDeviceGetPowerUsage", h)),
            "power_limit_w": _from_milli(call("nvmlDeviceGetEnforcedPowerLimit", h)),
            "energy_j": _from_milli(field_or("energy_mj", "nvmlDeviceGetTotalEnergyConsumption")),
            "sm_clock_mhz": call("nvmlDeviceGetClockInfo", h, nvml.NVML_CLOCK_SM),
            "mem_clock_mhz": call("nvmlDeviceGetClockInfo", h, nvml.NVML_CLOCK_MEM),
            "fan_pct": call("nvmlDeviceGetFanSpeed", h),
            "pstate": None if pstate is None or pstate == _PSTATE_UNKNOWN else pstate,
            "pcie_tx_bytes_s": _scale(call("nvmlDeviceGetPcieThroughput", h, nvml.NVML_PCIE_UTIL_TX_BYTES), _KIB),
            "pcie_rx_bytes_s": _scale(call("nvmlDeviceGetPcieThroughput", h, nvml.NVML_PCIE_UTIL_RX_BYTES), _KIB),
            "pcie_replay_total": field_or("pcie_replay", "nvmlDeviceGetPcieReplayCounter"),
            "enc_util_pct": None if enc is None else enc[0],
            "dec_util_pct": None if dec is None else dec[0],
            "ecc_corrected_total": field_or("ecc_sbe", "nvmlDeviceGetTotalEccErrors",
                                            nvml.NVML_MEMORY_ERROR_TYPE_CORRECTED, nvml.NVML_VOLATILE_ECC),
            "ecc_uncorrected_total": field_or("ecc_dbe", "nvmlDeviceGetTotalEccErrors",
                                              nvml.NVML_MEMORY_ERROR_TYPE_UNCORRECTED, nvml.NVML_VOLATILE_ECC),
            "remapped_rows_uncorrectable": None if remapped is None else remapped[1],
            "row_remap_pending": None if remapped is None else int(bool(remapped[2])),
            "xid_last": gpu.xid_last,
            "xid_count": gpu.xid_seen if gpu.xid_registered else None,
            "clocks_event_reasons": reasons,
            "process_count": None if processes is None else len(processes),
        }
        m.update(self._nvlink_rates(gpu, fields, now))
        m.update(self._gpm(gpu))
        return m

    def _field_values(self, gpu: _Gpu) -> dict[str, Any]:
        if not self._fields:
            return {}
        ids = [(field_id, scope) for _, field_id, scope in self._fields]
        values = self._call("nvmlDeviceGetFieldValues", gpu.handle, ids, gpu=gpu)
        if values is None:
            return {}
        out: dict[str, Any] = {}
        for (key, _, _), fv in zip(self._fields, values, strict=False):
            member = _VALUE_MEMBERS.get(fv.valueType)
            if fv.nvmlReturn == self._success and member is not None:
                out[key] = getattr(fv.value, member)
        return out

    def _memory(self, gpu: _Gpu) -> tuple[Any, Any, Any, Any]:
        v2 = getattr(self._nvml, "nvmlMemory_v2", None)
        info = self._call("nvmlDeviceGetMemoryInfo", gpu.handle, v2, gpu=gpu) if v2 is not None else None
        if info is not None:
            return info.used, info.free, info.total, info.reserved
        info = self._call("nvmlDeviceGetMemoryInfo", gpu.handle, gpu=gpu)  # v1 has no reserved figure
        if info is None:
            return None, None, None, None
        return info.used, info.free, info.total, None

    def _nvlink_rates(self, gpu: _Gpu, fields: dict[str, Any], now: float) -> Metrics:
        # The NVLink throughput fields are KiB counters; the rate is their increase over the interval.
        tx, rx = fields.get("nvlink_tx_kib"), fields.get("nvlink_rx_kib")
        prev, gpu.nvlink_prev = gpu.nvlink_prev, (now, tx, rx)
        if prev is None:
            return {"nvlink_tx_bytes_s": None, "nvlink_rx_bytes_s": None}
        dt = now - prev[0]
        return {
            "nvlink_tx_bytes_s": _scale(counter_rate(prev[1], tx, dt), _KIB),
            "nvlink_rx_bytes_s": _scale(counter_rate(prev[2], rx, dt), _KIB),
        }

    def _gpm(self, gpu: _Gpu) -> Metrics:
        """SM / tensor / DRAM active from GPU Performance Monitoring (Hopper+): the ratio between two samples."""
        out: Metrics = {name: None for name, _ in _GPM_METRICS}
        if gpu.gpm_supported is None:
            support = self._call("nvmlGpmQueryDeviceSupport", gpu.handle, gpu=gpu)
            gpu.gpm_supported = bool(_attr(support, "isSupportedDevice"))
            if gpu.gpm_supported:
                samples = [self._call("nvmlGpmSampleAlloc", gpu=gpu) for _ in range(2)]
                gpu.gpm_samples = [s for s in samples if s is not None]
                gpu.gpm_supported = len(gpu.gpm_samples) == 2
        if not gpu.gpm_supported:
            return out
        prev, cur = gpu.gpm_samples
        if self._call("nvmlGpmSampleGet", gpu.handle, cur, gpu=gpu) is None:
            gpu.gpm_primed = False
            return out
        if gpu.gpm_primed:
            out.update(self._gpm_metrics(gpu, prev, cur))
        gpu.gpm_samples = [cur, prev]
        gpu.gpm_primed = True
        return out

    def _gpm_metrics(self, gpu: _Gpu, prev: Any, cur: Any) -> Metrics:
        nvml = self._nvml
        wanted = [(name, getattr(nvml, const)) for name, const in _GPM_METRICS if hasattr(nvml, const)]
        request = nvml.c_nvmlGpmMetricsGet_t()
        request.version = nvml.NVML_GPM_METRICS_GET_VERSION
        request.numMetrics = len(wanted)
        request.sample1 = prev
        request.sample2 = cur
        for i, (_, metric_id) in enumerate(wanted):
            request.metrics[i].metricId = metric_id
        if self._call("nvmlGpmMetricsGet", request, gpu=gpu) is None:
            return {}
        return {
            name: request.metrics[i].value if request.metrics[i].nvmlReturn == self._success else None
            for i, (name, _) in enumerate(wanted)
        }

    # -- control ------------------------------------------------------------------------------------------

    def set_power_limit(self, index: int, watts: float) -> float | None:
        """Set GPU `index`'s power limit, clamped to what the board allows; the applied watts, or None."""
        if not 0 <= index < len(self._gpus):
            log.warning("power limit for GPU %d ignored: this node has %d GPU(s)", index, len(self._gpus))
            return None
        gpu = self._gpus[index]
        if gpu.lost:
            return None
        milliwatts = round(watts * 1000)
        constraints = self._call("nvmlDeviceGetPowerManagementLimitConstraints", gpu.handle, gpu=gpu)
        if constraints is not None:
            milliwatts = max(constraints[0], min(constraints[1], milliwatts))
        if self._call("nvmlDeviceSetPowerManagementLimit", gpu.handle, milliwatts, gpu=gpu) is None:
            log.warning("could not set GPU %d's power limit to %.0f W (NVML refused; setting it needs root)",
                        index, milliwatts / 1000)
            return None
        return milliwatts / 1000

    def default_power_limit(self, index: int) -> float | None:
        """GPU `index`'s default power limit in watts (what the board runs at uncapped), None when unknown."""
        if not 0 <= index < len(self._gpus):
            return None
        gpu = self._gpus[index]
        if gpu.lost or gpu.handle is None:
            return None
        milliwatts = self._call("nvmlDeviceGetPowerManagementDefaultLimit", gpu.handle, gpu=gpu)
        # _call gives True for a call that returned nothing; only a positive number of milliwatts is a limit.
        if isinstance(milliwatts, bool) or not isinstance(milliwatts, int | float) or milliwatts <= 0:
            return None
        return _from_milli(milliwatts)

    def close(self) -> None:
        for gpu in self._gpus:
            for sample in gpu.gpm_samples:
                self._call("nvmlGpmSampleFree", sample)
            gpu.gpm_samples = []
        if self._event_set is not None:
            self._call("nvmlEventSetFree", self._event_set)
            self._event_set = None
        self._call("nvmlShutdown")
