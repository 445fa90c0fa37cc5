"""Host metrics of a simulated node, following its engine: the serving process's CPU, memory and network use
grow with the number of running requests. net_rtt_ms is left to the push loop, as on a real host."""

from __future__ import annotations

import random

from agents.catalogue import HOST_METRICS
from agents.collectors.base import Metrics, empty
from agents.sim.engine import Engine

GIB = 1024**3
HOST_MEM = 1024 * GIB
CORES = 128


class VirtualHost:
    def __init__(self, engine: Engine, seed: int | None = None) -> None:
        self.engine = engine
        self._rng = random.Random(seed)

    def collect(self) -> Metrics:
        load = self.engine.occupancy()
        queue = min(1.0, len(self.engine.waiting) / 100.0)
        jitter = self._rng.uniform
        cpu = min(100.0, 4.0 + 20.0 * load + 6.0 * queue + jitter(-0.5, 0.5))
        used = int(96 * GIB + 64 * GIB * load)
        m = empty(HOST_METRICS)
        m.update({
            "cpu_util_pct": round(max(0.0, cpu), 1),
            "cpu_iowait_pct": round(0.2 + 0.5 * load, 2),
            "load1": round(CORES * cpu / 100.0, 2),
            "mem_used_bytes": used,
            "mem_available_bytes": HOST_MEM - used,
            "swap_used_bytes": 0,
            "disk_read_bytes_s": round(1.0e6 * jitter(0.5, 1.5)),
            "disk_write_bytes_s": round(4.0e5 * jitter(0.5, 1.5)),
            "disk_busy_pct": round(0.5 * jitter(0.5, 1.5), 2),
            "net_rx_bytes_s": round(2.0e5 + 4.0e7 * load * jitter(0.9, 1.1)),
            "net_tx_bytes_s": round(3.0e5 + 6.0e7 * load * jitter(0.9, 1.1)),
        })
        return m
