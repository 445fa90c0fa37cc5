"""Host metrics from psutil: CPU, memory, disk and network.

Utilisation and throughput come from counter deltas between two calls, so the first call reports None for them
(there is nothing to compare with yet) rather than a misleading 0.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from typing import Any

from agents.catalogue import HOST_METRICS
from agents.collectors.base import Metrics, counter_rate, empty

log = logging.getLogger(__name__)


def _pct(part: float, whole: float) -> float | None:
    return None if whole <= 0 else max(0.0, min(100.0, 100.0 * part / whole))


class HostCollector:
    """Reads HOST_METRICS.

    `net_rtt_ms` is not measured here: the push loop fills it in with the round trip of its last successful push,
    the one latency that matters to the scheduler.
    """

    def __init__(self, psutil_module: Any = None, clock: Callable[[], float] = time.monotonic) -> None:
        if psutil_module is None:
            import psutil as psutil_module
        self._ps = psutil_module
        self._clock = clock
        self._prev_t: float | None = None
        self._prev_cpu: Any = None
        self._prev_disk: tuple[float, float] | None = None
        self._prev_busy: dict[str, float] = {}
        self._prev_net: tuple[float, float] | None = None

    def _read(self, name: str, *args: Any, **kwargs: Any) -> Any:
        # Containers and odd kernels make single psutil calls fail (no /proc/diskstats, say); that metric is None.
        try:
            return getattr(self._ps, name)(*args, **kwargs)
        except Exception as exc:  # noqa: BLE001 - psutil raises a variety of OSError/RuntimeError/AttributeError
            log.debug("psutil.%s failed: %s", name, exc)
            return None

    def collect(self) -> Metrics:
        now = self._clock()
        dt = None if self._prev_t is None else now - self._prev_t
        self._prev_t = now
        m = empty(HOST_METRICS)
        m["cpu_util_pct"], m["cpu_iowait_pct"] = self._cpu()
        load = self._read("getloadavg")
        m["load1"] = None if load is None else load[0]
        vm = self._read("virtual_memory")
        if vm is not None:
            m["mem_used_bytes"] = vm.used
            m["mem_available_bytes"] = vm.available
        swap = self._read("swap_memory")
        m["swap_used_bytes"] = None if swap is None else swap.used
        m.update(self._disk(dt))
        m.update(self._net(dt))
        return m

    def _cpu(self) -> tuple[float | None, float | None]:
        cur = self._read("cpu_times")
        prev, self._prev_cpu = self._prev_cpu, cur
        if cur is None or prev is None:
            return None, None
        delta = {k: max(0.0, getattr(cur, k) - getattr(prev, k)) for k in cur._fields}
        # Linux counts guest time inside user/nice as well; psutil's own cpu_percent subtracts it the same way.
        total = sum(delta.values()) - delta.get("guest", 0.0) - delta.get("guest_nice", 0.0)
        iowait = delta.get("iowait")
        idle = delta.get("idle", 0.0) + (iowait or 0.0)
        return _pct(total - idle, total), None if iowait is None else _pct(iowait, total)

    def _disk(self, dt: float | None) -> Metrics:
        out: Metrics = {"disk_read_bytes_s": None, "disk_write_bytes_s": None, "disk_busy_pct": None}
        # perdisk=False sums whole disks only (partitions would count twice); busy time needs the per-disk view.
        total = self._read("disk_io_counters", perdisk=False)
        cur = None if total is None else (float(total.read_bytes), float(total.write_bytes))
        prev, self._prev_disk = self._prev_disk, cur
        if dt is not None and prev is not None and cur is not None:
            out["disk_read_bytes_s"] = counter_rate(prev[0], cur[0], dt)
            out["disk_write_bytes_s"] = counter_rate(prev[1], cur[1], dt)
        per_disk = self._read("disk_io_counters", perdisk=True) or {}
        busy = {name: float(d.busy_time) for name, d in per_disk.items() if hasattr(d, "busy_time")}
        prev_busy, self._prev_busy = self._prev_busy, busy
        if dt is not None and dt > 0:
            deltas = [busy[n] - prev_busy[n] for n in busy.keys() & prev_busy.keys() if busy[n] >= prev_busy[n]]
            if deltas:
                out["disk_busy_pct"] = _pct(max(deltas), dt * 1000.0)  # busy_time is in milliseconds
        return out

    def _net(self, dt: float | None) -> Metrics:
        out: Metrics = {"net_rx_bytes_s": None, "net_tx_bytes_s": None}
        nics = self._read("net_io_counters", pernic=True)
        # Loopback traffic (this agent scraping a local vLLM, for one) is not network load.
        cur = None if nics is None else (
            float(sum(n.bytes_recv for name, n in nics.items() if not name.startswith("lo"))),
            float(sum(n.bytes_sent for name, n in nics.items() if not name.startswith("lo"))),
        )
        prev, self._prev_net = self._prev_net, cur
        if dt is not None and prev is not None and cur is not None:
            out["net_rx_bytes_s"] = counter_rate(prev[0], cur[0], dt)
            out["net_tx_bytes_s"] = counter_rate(prev[1], cur[1], dt)
        return out
