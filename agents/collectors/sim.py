"""A simulated node for `--sim`: plausible GPU, host and inference numbers without a GPU.

One smooth random walk (the node's load) drives everything, so the numbers hang together the way a real node's
do: utilisation follows load, power follows utilisation up to the limit (then clocks drop and the power-cap
reason bit is set), temperature follows power with a lag, memory in use follows the KV cache, the queue grows
only when the node is saturated. An inference source can replace the simulated inference numbers (a real vLLM, or
a simulated server of the fleet simulator).
"""

from __future__ import annotations

import random
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from agents.collectors.base import InferenceSource, Metrics

GIB = 1024**3
_FB_TOTAL = 81_559 * 1024**2  # what NVML reports for an H100 80GB HBM3
_FB_RESERVED = 477 * 1024**2
_FB_WEIGHTS = 52 * GIB  # model weights resident on every GPU
_IDLE_W = 70.0
_TDP_W = 700.0
_MIN_LIMIT_W = 200.0
_MAX_SM_MHZ = 1980
_MEM_MHZ = 2619
_HOST_MEM = 2048 * GIB
_CORES = 224
_THERMAL_LAG_S = 30.0

_REASON_IDLE = 0x1
_REASON_SW_POWER_CAP = 0x4


def _clamp(x: float, lo: float, hi: float) -> float:
    return max(lo, min(hi, x))


@dataclass
class _SimGpu:
    index: int
    uuid: str
    offset: float  # this GPU's share of the load differs a little from its neighbours'
    power_limit_w: float = _TDP_W
    temp_c: float = 32.0
    energy_j: float = 0.0


class SimBackend:
    """Backend with `gpus` simulated H100s. `seed` makes a run repeatable; `clock` drives energy and heat."""

    def __init__(self, gpus: int = 8, seed: int | None = None, inference: InferenceSource | None = None,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self._rng = random.Random(seed)
        self._clock = clock
        self._inference = inference
        self._last: float | None = None
        self._load = self._rng.uniform(0.3, 0.6)
        self._target = self._load
        self._gpus = [
            _SimGpu(i, f"GPU-{self._rng.getrandbits(128):032x}", self._rng.uniform(-0.05, 0.05)) for i in range(gpus)
        ]
        self._preemptions = 0
        self._prefix_hit = self._rng.uniform(30.0, 60.0)

    def _walk(self, x: float, sigma: float, lo: float, hi: float) -> float:
        return _clamp(x + self._rng.gauss(0.0, sigma), lo, hi)

    def collect(self) -> dict[str, Any]:
        now = self._clock()
        dt = 0.0 if self._last is None else max(0.0, now - self._last)
        self._last = now
        # The target drifts slowly and the load chases it, which gives smooth swings rather than white noise.
        self._target = self._walk(self._target, 0.04, 0.05, 1.0)
        self._load = _clamp(self._load + 0.3 * (self._target - self._load) + self._rng.gauss(0.0, 0.02), 0.0, 1.0)
        self._prefix_hit = self._walk(self._prefix_hit, 1.0, 5.0, 90.0)
        kv = _clamp(20.0 + 75.0 * self._load + self._rng.gauss(0.0, 1.0), 0.0, 100.0)
        return {
            "host": self._host(),
            "gpus": [self._gpu(g, dt, kv) for g in self._gpus],
            "inference": self._inference.collect() if self._inference is not None else self._inference_metrics(kv),
        }

    def _gpu(self, g: _SimGpu, dt: float, kv_pct: float) -> Metrics:
        util = _clamp(100.0 * (self._load + g.offset) + self._rng.gauss(0.0, 1.5), 0.0, 100.0)
        demand = _IDLE_W + (_TDP_W - _IDLE_W) * util / 100.0
        power = min(demand, g.power_limit_w) * self._rng.uniform(0.97, 1.0)
        capped = demand > g.power_limit_w
        # Dynamic power goes roughly with the cube of the clock, so a cap cuts the clock by the cube root.
        sm_clock = _MAX_SM_MHZ * (g.power_limit_w / demand) ** (1 / 3) if capped else _MAX_SM_MHZ
        if util < 2.0:
            sm_clock = 345.0
        target_temp = 28.0 + 55.0 * power / _TDP_W
        g.temp_c += (target_temp - g.temp_c) * min(1.0, dt / _THERMAL_LAG_S)
        g.energy_j += power * dt
        used = min(_FB_TOTAL - _FB_RESERVED, _FB_WEIGHTS + (_FB_TOTAL - _FB_RESERVED - _FB_WEIGHTS) * kv_pct / 100.0)
        reasons = (_REASON_SW_POWER_CAP if capped else 0) | (_REASON_IDLE if util < 2.0 else 0)
        return {
            "index": g.index,
            "uuid": g.uuid,
            "name": "NVIDIA H100 80GB HBM3",
            "gpu_util_pct": round(util, 1),
            "mem_copy_util_pct": round(util * 0.45, 1),
            "fb_used_bytes": int(used),
            "fb_free_bytes": int(_FB_TOTAL - _FB_RESERVED - int(used)),
            "fb_total_bytes": _FB_TOTAL,
            "fb_reserved_bytes": _FB_RESERVED,
            "temp_c": round(g.temp_c, 1),
            "mem_temp_c": round(g.temp_c + 6.0, 1),
            "power_w": min(round(power, 1), g.power_limit_w),
            "power_limit_w": g.power_limit_w,
            "energy_j": round(g.energy_j, 3),
            "sm_clock_mhz": round(sm_clock),
            "mem_clock_mhz": _MEM_MHZ,
            "fan_pct": None,  # SXM boards have no fan of their own; NVML reports NotSupported
            "pstate": 0,
            "pcie_tx_bytes_s": round(util * 2.0e7 * self._rng.uniform(0.8, 1.2)),
            "pcie_rx_bytes_s": round(util * 3.0e7 * self._rng.uniform(0.8, 1.2)),
            "pcie_replay_total": 0,
            "enc_util_pct": 0.0,
            "dec_util_pct": 0.0,
            "ecc_corrected_total": 0,
            "ecc_uncorrected_total": 0,
            "remapped_rows_uncorrectable": 0,
            "row_remap_pending": 0,
            "xid_last": None,
            "xid_count": 0,
            "clocks_event_reasons": reasons,
            "nvlink_tx_bytes_s": round(util * 1.5e9 * self._rng.uniform(0.8, 1.2)),
            "nvlink_rx_bytes_s": round(util * 1.5e9 * self._rng.uniform(0.8, 1.2)),
            "sm_active_pct": round(util * 0.85, 1),
            "tensor_active_pct": round(util * 0.55, 1),
            "dram_active_pct": round(util * 0.65, 1),
            "process_count": 1,
        }

    def _host(self) -> Metrics:
        cpu = _clamp(12.0 + 30.0 * self._load + self._rng.gauss(0.0, 2.0), 0.0, 100.0)
        used = _clamp(180 * GIB + 120 * GIB * self._load + self._rng.gauss(0.0, GIB), 0.0, _HOST_MEM)
        disk_read = max(0.0, 4.0e7 + 1.5e8 * self._load + self._rng.gauss(0.0, 1.0e7))
        return {
            "cpu_util_pct": round(cpu, 1),
            "cpu_iowait_pct": round(_clamp(0.5 + 3.0 * self._load + self._rng.gauss(0.0, 0.3), 0.0, 100.0), 2),
            "load1": round(_CORES * cpu / 100.0, 2),
            "mem_used_bytes": int(used),
            "mem_available_bytes": int(_HOST_MEM - used),
            "swap_used_bytes": 0,
            "disk_read_bytes_s": round(disk_read),
            "disk_write_bytes_s": round(disk_read * 0.3),
            "disk_busy_pct": round(_clamp(disk_read / 2.0e7, 0.0, 100.0), 1),
            "net_rx_bytes_s": round(2.0e6 + 8.0e7 * self._load * self._rng.uniform(0.9, 1.1)),
            "net_tx_bytes_s": round(4.0e6 + 1.2e8 * self._load * self._rng.uniform(0.9, 1.1)),
            "net_rtt_ms": None,  # measured by the push loop
        }

    def _inference_metrics(self, kv_pct: float) -> Metrics:
        running = round(64 * self._load)
        waiting = max(0, round(400 * (self._load - 0.85)))
        if self._load > 0.9 and self._rng.random() < 0.3:
            self._preemptions += self._rng.randint(1, 3)
        ttft_p50 = 0.06 + 0.25 * self._load + 0.004 * waiting
        itl_p50 = 0.012 + 0.02 * self._load
        return {
            "requests_running": running,
            "requests_waiting": waiting,
            "kv_cache_usage_pct": round(kv_pct, 1),
            "prompt_tokens_s": round(running * 120.0 * self._rng.uniform(0.8, 1.2), 1),
            "generation_tokens_s": round(running / itl_p50 * self._rng.uniform(0.9, 1.0), 1),
            "ttft_p50_s": round(ttft_p50, 4),
            "ttft_p95_s": round(ttft_p50 * 2.4, 4),
            "itl_p50_s": round(itl_p50, 4),
            "e2e_p95_s": round(ttft_p50 * 2.4 + 400 * itl_p50 * 1.5, 3),
            "queue_time_p95_s": round(0.01 + 0.02 * waiting, 3),
            "prefix_cache_hit_pct": round(self._prefix_hit, 1),
            "preemptions_total": self._preemptions,
            "request_errors_s": round(max(0.0, 4.0 * (self._load - 0.9)), 3),
        }

    def models(self) -> list[str] | None:
        return self._inference.models() if self._inference is not None else None

    def set_power_limit(self, index: int, watts: float) -> float | None:
        if not 0 <= index < len(self._gpus):
            return None
        applied = round(_clamp(float(watts), _MIN_LIMIT_W, _TDP_W), 3)  # NVML takes whole milliwatts
        self._gpus[index].power_limit_w = applied
        return applied

    def default_power_limit(self, index: int) -> float | None:
        """The limit the board runs at when nobody capped it (an H100 SXM's default is its TDP)."""
        return _TDP_W if 0 <= index < len(self._gpus) else None

    def close(self) -> None:
        if self._inference is not None:
            self._inference.close()
