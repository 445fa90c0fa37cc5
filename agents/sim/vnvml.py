"""A virtual NVML for a simulated node: its GPUs read the node's engine instead of hardware.

It is a GPU source for the agent (agents/collectors/base.py: collect / set_power_limit / close), so the agent of a
simulated node runs the same push code as on a real host. What the GPUs report follows the engine:

- utilisation is the engine's utilisation (30 % + 70 % of batch occupancy while it steps, 0 idle), averaged
  since the previous read the way NVML averages over its sample period;
- frame buffer used is the model weights plus the KV cache in use;
- power follows utilisation from idle to the board's TDP and stops at the power limit; a limit below what the
  load demands lowers the SM clock (dynamic power goes with about the cube of the clock), sets the SW-power-cap
  reason bit and slows the engine by the same factor as the clock (`slowdown`): a power cap costs speed;
- temperature follows power with a first-order lag; energy integrates power.

Metrics a board does not have (an L40S has no HBM temperature, NVLink or GPM; no SXM board has a fan) are None,
as NVML's NotSupported becomes None in the real collector. The power limit obeys the board's constraints: the
device call refuses a value outside [min, max] like NVML; the agent-facing `set_power_limit` clamps first, like
agents/collectors/nvml.py does.
"""

from __future__ import annotations

import random
import time
from collections.abc import Callable
from dataclasses import dataclass

from agents.collectors.base import Metrics
from agents.sim.engine import Engine
from agents.sim.profiles import Profile

REASON_IDLE = 0x1
REASON_SW_POWER_CAP = 0x4
THERMAL_LAG_S = 30.0  # model seconds for temperature to close ~63 % of the gap to its steady state
KV_POOL_FRACTION = 0.9  # of the memory left after the weights, what the KV cache may use (vLLM's default)


class PowerLimitError(ValueError):
    """The requested limit is outside the board's constraints (NVML_ERROR_INVALID_ARGUMENT on a real card)."""


@dataclass
class VirtualGpu:
    index: int
    uuid: str
    offset: float  # this GPU's utilisation differs a little from its neighbours'
    power_limit_w: float
    temp_c: float
    energy_j: float = 0.0
    last_read: float | None = None
    last_integral: float = 0.0


class VirtualNvml:
    def __init__(self, profile: Profile, engine: Engine, gpus: int = 8, seed: int | None = None,
                 clock: Callable[[], float] = time.monotonic, alive: Callable[[], bool] = lambda: True) -> None:
        self.profile = profile
        self.engine = engine
        self._clock = clock
        self._alive = alive  # False while the node's inference server is down: no process on the GPUs
        self._rng = random.Random(seed)
        self.gpus = [
            VirtualGpu(i, f"GPU-{self._rng.getrandbits(128):032x}", self._rng.uniform(-0.03, 0.03),
                       profile.power_default_w, profile.ambient_c + profile.heat_c_per_w * profile.idle_w)
            for i in range(gpus)
        ]
        engine.dvfs = self.slowdown

    # -- power ----------------------------------------------------------------------------------------------

    def constraints(self, index: int) -> tuple[float, float]:
        return self.profile.power_min_w, self.profile.power_max_w

    def device_set_power_limit(self, index: int, watts: float) -> None:
        """Set GPU `index`'s limit exactly as asked; PowerLimitError outside the constraints (nothing changes)."""
        lo, hi = self.constraints(index)
        if not 0 <= index < len(self.gpus):
            raise PowerLimitError(f"no GPU {index}: this node has {len(self.gpus)}")
        if not lo <= watts <= hi:
            raise PowerLimitError(f"power limit {watts} W is outside this board's constraints [{lo}, {hi}] W")
        self.gpus[index].power_limit_w = round(float(watts), 3)  # NVML takes whole milliwatts

    def set_power_limit(self, index: int, watts: float) -> float | None:
        """The agent's call: clamp into the constraints, set, return what was applied (None: no such GPU)."""
        if not 0 <= index < len(self.gpus):
            return None
        lo, hi = self.constraints(index)
        self.device_set_power_limit(index, max(lo, min(hi, float(watts))))
        return self.gpus[index].power_limit_w

    def default_power_limit(self, index: int) -> float | None:
        """The board's default limit (what the agent restores when a cap is lifted); None: no such GPU."""
        return self.profile.power_default_w if 0 <= index < len(self.gpus) else None

    def _demand_w(self, util: float) -> float:
        p = self.profile
        return p.idle_w + (p.power_max_w - p.idle_w) * util

    def clock_factor(self, gpu: VirtualGpu, util: float) -> float:
        """SM clock as a fraction of its maximum under `gpu`'s power limit at utilisation `util` (0-1)."""
        demand = self._demand_w(util)
        if demand <= gpu.power_limit_w:
            return 1.0
        return float((gpu.power_limit_w / demand) ** (1.0 / 3.0))

    def slowdown(self, util: float) -> float:
        """Engine time factor at utilisation `util`: the model runs tensor-parallel, so the slowest GPU sets it."""
        return max((1.0 / self.clock_factor(g, util) for g in self.gpus), default=1.0)

    # -- reading --------------------------------------------------------------------------------------------

    def collect(self) -> list[Metrics]:
        return [self._read(g) for g in self.gpus]

    def _read(self, g: VirtualGpu) -> Metrics:
        p = self.profile
        now = self._clock()
        dt = 0.0 if g.last_read is None else max(0.0, now - g.last_read)
        integral = self.engine.util_integral
        if dt > 0:
            util = (integral - g.last_integral) / dt
        else:
            util = self.engine.last_step_util if self.engine.running else 0.0
        g.last_read, g.last_integral = now, integral
        alive = self._alive()
        util = max(0.0, min(1.0, util + g.offset * (util > 0))) if alive else 0.0
        demand = self._demand_w(util)
        capped = demand > g.power_limit_w
        power = min(demand, g.power_limit_w) * self._rng.uniform(0.98, 1.0)
        clock = p.sm_clock_max_mhz * self.clock_factor(g, util)
        idle = util < 0.02
        if idle:
            clock = p.sm_clock_idle_mhz
        # First-order lag towards the steady-state temperature, in model time (a compressed day heats faster).
        target = p.ambient_c + p.heat_c_per_w * power
        model_dt = dt * self.engine.time_scale
        g.temp_c += (target - g.temp_c) * min(1.0, model_dt / THERMAL_LAG_S)
        g.energy_j += power * dt
        usable = p.fb_total_bytes - p.fb_reserved_bytes
        kv_pool = (usable - p.weights_bytes) * KV_POOL_FRACTION
        used = int(p.weights_bytes + kv_pool * self.engine.kv_usage) if alive else 0
        pct = 100.0 * util
        jitter = self._rng.uniform
        return {
            "index": g.index,
            "uuid": g.uuid,
            "name": p.gpu_name,
            "gpu_util_pct": round(pct, 1),
            "mem_copy_util_pct": round(pct * 0.6, 1),  # decode is memory-bound
            "fb_used_bytes": used,
            "fb_free_bytes": usable - used,
            "fb_total_bytes": p.fb_total_bytes,
            "fb_reserved_bytes": p.fb_reserved_bytes,
            "temp_c": round(g.temp_c, 1),
            "mem_temp_c": round(g.temp_c + 6.0, 1) if p.has_hbm_temp else None,
            "power_w": round(power, 1),
            "power_limit_w": g.power_limit_w,
            "energy_j": round(g.energy_j, 3),
            "sm_clock_mhz": round(clock),
            "mem_clock_mhz": p.mem_clock_mhz,
            "fan_pct": None,  # passively cooled data-centre boards: NVML reports NotSupported
            "pstate": 0 if not idle else 8,
            "pcie_tx_bytes_s": round(util * 2.0e9 * jitter(0.9, 1.1)),
            "pcie_rx_bytes_s": round(util * 3.0e9 * jitter(0.9, 1.1)),
            "pcie_replay_total": 0,
            "enc_util_pct": 0.0,
            "dec_util_pct": 0.0,
            "ecc_corrected_total": 0,
            "ecc_uncorrected_total": 0,
            "remapped_rows_uncorrectable": 0,
            "row_remap_pending": 0,
            "xid_last": None,
            "xid_count": 0,
            "clocks_event_reasons": (REASON_SW_POWER_CAP if capped else 0) | (REASON_IDLE if idle else 0),
            "nvlink_tx_bytes_s": round(util * 1.5e11 * jitter(0.9, 1.1)) if p.has_nvlink else None,
            "nvlink_rx_bytes_s": round(util * 1.5e11 * jitter(0.9, 1.1)) if p.has_nvlink else None,
            "sm_active_pct": round(pct * 0.85, 1) if p.has_gpm else None,
            "tensor_active_pct": round(pct * 0.55, 1) if p.has_gpm else None,
            "dram_active_pct": round(pct * 0.7, 1) if p.has_gpm else None,
            "process_count": 1 if alive else 0,
        }

    def close(self) -> None:
        pass
