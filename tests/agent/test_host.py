"""HostCollector: deltas from a scripted psutil, and a smoke run against the real one."""

from __future__ import annotations

import time
import types
from collections import namedtuple
from typing import Any

import psutil
import pytest

from agents.catalogue import HOST_NAMES
from agents.collectors.host import HostCollector

CpuTimes = namedtuple("CpuTimes", "user nice system idle iowait irq softirq steal guest guest_nice")
Disk = namedtuple("Disk", "read_bytes write_bytes busy_time")
Nic = namedtuple("Nic", "bytes_recv bytes_sent")


class ScriptedPsutil:
    """Counters that the test advances between two collect() calls."""

    def __init__(self) -> None:
        self.cpu = CpuTimes(100.0, 0.0, 50.0, 800.0, 10.0, 0.0, 5.0, 0.0, 20.0, 0.0)
        self.disk_total = Disk(1_000_000, 2_000_000, 0)
        self.disks = {"nvme0n1": Disk(1_000_000, 2_000_000, 10_000), "nvme0n1p1": Disk(900_000, 1_900_000, 9_000),
                      "sda": Disk(0, 0, 100)}
        self.nics = {"lo": Nic(10**9, 10**9), "eth0": Nic(5_000, 7_000), "ib0": Nic(1_000, 1_000)}
        self.broken: set[str] = set()

    def _check(self, name: str) -> None:
        if name in self.broken:
            raise OSError(f"{name} unavailable")

    def cpu_times(self) -> CpuTimes:
        self._check("cpu_times")
        return self.cpu

    def getloadavg(self) -> tuple[float, float, float]:
        return (3.25, 2.0, 1.0)

    def virtual_memory(self) -> Any:
        return types.SimpleNamespace(used=64 * 2**30, available=448 * 2**30)

    def swap_memory(self) -> Any:
        return types.SimpleNamespace(used=2**20)

    def disk_io_counters(self, perdisk: bool = False) -> Any:
        self._check("disk_io_counters")
        return self.disks if perdisk else self.disk_total

    def net_io_counters(self, pernic: bool = False) -> Any:
        return self.nics


def test_first_call_has_no_rates_then_deltas_over_the_interval() -> None:
    ps = ScriptedPsutil()
    t = [50.0]
    host = HostCollector(ps, clock=lambda: t[0])
    first = host.collect()
    assert set(first) == HOST_NAMES
    for name in ("cpu_util_pct", "cpu_iowait_pct", "disk_read_bytes_s", "disk_write_bytes_s", "disk_busy_pct",
                 "net_rx_bytes_s", "net_tx_bytes_s", "net_rtt_ms"):
        assert first[name] is None, name  # no previous counters: unknown, not 0
    assert first["load1"] == 3.25 and first["mem_used_bytes"] == 64 * 2**30 and first["swap_used_bytes"] == 2**20

    t[0] += 2.0
    c = ps.cpu
    # 100 s of CPU time: 30 user, 10 system, 40 idle, 10 iowait, 10 guest (already inside user on Linux).
    ps.cpu = c._replace(user=c.user + 30 + 10, system=c.system + 10, idle=c.idle + 40, iowait=c.iowait + 10,
                        guest=c.guest + 10)
    ps.disk_total = Disk(1_000_000 + 4_000_000, 2_000_000 + 1_000_000, 0)
    ps.disks = {"nvme0n1": Disk(0, 0, 10_000 + 1_500), "nvme0n1p1": Disk(0, 0, 9_000 + 1_400),
                "sda": Disk(0, 0, 100 + 200)}
    ps.nics = {"lo": Nic(2 * 10**9, 2 * 10**9), "eth0": Nic(5_000 + 3_000, 7_000 + 1_000),
               "ib0": Nic(1_000 + 1_000, 1_000 + 3_000)}
    m = host.collect()
    assert m["cpu_util_pct"] == pytest.approx(50.0)  # 40 user + 10 system of 100
    assert m["cpu_iowait_pct"] == pytest.approx(10.0)
    assert m["disk_read_bytes_s"] == pytest.approx(2_000_000.0)
    assert m["disk_write_bytes_s"] == pytest.approx(500_000.0)
    assert m["disk_busy_pct"] == pytest.approx(75.0)  # the busiest disk: 1500 ms busy in 2000 ms
    assert m["net_rx_bytes_s"] == pytest.approx(2_000.0)  # loopback left out
    assert m["net_tx_bytes_s"] == pytest.approx(2_000.0)


def test_a_failing_psutil_call_only_blanks_its_own_metrics() -> None:
    ps = ScriptedPsutil()
    ps.broken = {"disk_io_counters"}
    host = HostCollector(ps)
    host.collect()
    ps.cpu = ps.cpu._replace(idle=ps.cpu.idle + 10)
    m = host.collect()
    assert m["disk_read_bytes_s"] is None and m["disk_busy_pct"] is None
    assert m["cpu_util_pct"] is not None and m["load1"] == 3.25


def test_counter_going_backwards_is_not_a_negative_rate() -> None:
    ps = ScriptedPsutil()
    t = [0.0]
    host = HostCollector(ps, clock=lambda: t[0])
    host.collect()
    t[0] = 1.0
    ps.nics = {"eth0": Nic(0, 0)}  # an interface went away
    m = host.collect()
    assert m["net_rx_bytes_s"] is None and m["net_tx_bytes_s"] is None


def test_real_psutil() -> None:
    host = HostCollector(psutil)
    host.collect()
    time.sleep(0.2)  # the kernel counts CPU time in 10 ms ticks
    m = host.collect()
    assert set(m) == HOST_NAMES
    assert m["mem_used_bytes"] > 0 and m["mem_available_bytes"] > 0
    assert m["cpu_util_pct"] is not None and 0 <= m["cpu_util_pct"] <= 100
    assert m["net_rtt_ms"] is None  # filled in by the push loop
