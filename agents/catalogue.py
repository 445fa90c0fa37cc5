"""The metric catalogue: names, units and valid ranges.

This is the contract between the agent and the server (DESIGN.md, "Metric catalogue").  It lives in the
agent package because the agent must never import Django; the server imports it from here so the two
sides cannot drift apart.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

Scope = Literal["gpu", "host", "inference"]
Kind = Literal["gauge", "counter", "event"]
SqlType = Literal["real", "double precision", "bigint", "smallint", "integer"]

BIG = 2**62  # upper bound for byte counts and counters: far above anything real, below int64 overflow


@dataclass(frozen=True)
class Metric:
    name: str
    scope: Scope
    unit: str
    help: str
    lo: float
    hi: float
    sql: SqlType = "real"
    kind: Kind = "gauge"
    integer: bool = False

    @property
    def is_pct(self) -> bool:
        return self.unit == "percent"


def _m(name: str, scope: Scope, unit: str, help: str, lo: float, hi: float, sql: SqlType = "real",
       kind: Kind = "gauge", integer: bool = False) -> Metric:
    return Metric(name, scope, unit, help, lo, hi, sql, kind, integer)


def _pct(name: str, scope: Scope, help: str) -> Metric:
    return _m(name, scope, "percent", help, 0, 100)


def _bytes(name: str, scope: Scope, help: str, kind: Kind = "gauge") -> Metric:
    return _m(name, scope, "bytes", help, 0, BIG, "bigint", kind, integer=True)


def _rate(name: str, scope: Scope, help: str) -> Metric:
    return _m(name, scope, "bytes_per_second", help, 0, BIG, "double precision")


def _count(name: str, scope: Scope, help: str, kind: Kind = "counter") -> Metric:
    return _m(name, scope, "count", help, 0, BIG, "bigint", kind, integer=True)


def _secs(name: str, help: str) -> Metric:
    return _m(name, "inference", "seconds", help, 0, 86_400)


GPU_METRICS: tuple[Metric, ...] = (
    _pct("gpu_util_pct", "gpu", "GPU utilisation (time a kernel was running)"),
    _pct("mem_copy_util_pct", "gpu", "Memory controller (copy engine) utilisation"),
    _bytes("fb_used_bytes", "gpu", "Frame buffer memory used"),
    _bytes("fb_free_bytes", "gpu", "Frame buffer memory free"),
    _bytes("fb_total_bytes", "gpu", "Frame buffer memory total"),
    _bytes("fb_reserved_bytes", "gpu", "Frame buffer memory reserved by the driver"),
    _m("temp_c", "gpu", "celsius", "GPU core temperature", -50, 150),
    _m("mem_temp_c", "gpu", "celsius", "HBM temperature", -50, 150),
    _m("power_w", "gpu", "watts", "Power draw", 0, 5_000),
    _m("power_limit_w", "gpu", "watts", "Enforced power limit", 0, 5_000),
    _m("energy_j", "gpu", "joules", "Total energy since driver load", 0, 1e18, "double precision", "counter"),
    _m("sm_clock_mhz", "gpu", "megahertz", "SM clock", 0, 10_000),
    _m("mem_clock_mhz", "gpu", "megahertz", "Memory clock", 0, 50_000),
    _pct("fan_pct", "gpu", "Fan speed"),
    _m("pstate", "gpu", "state", "Performance state (0 = P0, fastest; 15 = P15)", 0, 15, "smallint", integer=True),
    _rate("pcie_tx_bytes_s", "gpu", "PCIe transmit throughput"),
    _rate("pcie_rx_bytes_s", "gpu", "PCIe receive throughput"),
    _count("pcie_replay_total", "gpu", "PCIe replay counter"),
    _pct("enc_util_pct", "gpu", "Video encoder utilisation"),
    _pct("dec_util_pct", "gpu", "Video decoder utilisation"),
    _count("ecc_corrected_total", "gpu", "Corrected ECC errors, volatile"),
    _count("ecc_uncorrected_total", "gpu", "Uncorrected ECC errors, volatile"),
    _count("remapped_rows_uncorrectable", "gpu", "Rows remapped for uncorrectable errors"),
    _m("row_remap_pending", "gpu", "bool", "A row remap is pending (GPU reset needed)", 0, 1, "smallint", integer=True),
    _m("xid_last", "gpu", "code", "Last XID error code seen", 0, 1_000_000, "integer", "event", integer=True),
    _m("xid_count", "gpu", "count", "XID errors seen in the interval", 0, 1_000_000, "integer", "event", integer=True),
    _m("clocks_event_reasons", "gpu", "bitmask", "Clock throttle reasons (NVML bitmask)", 0, 2**62, "bigint",
       integer=True),
    _rate("nvlink_tx_bytes_s", "gpu", "NVLink transmit throughput"),
    _rate("nvlink_rx_bytes_s", "gpu", "NVLink receive throughput"),
    _pct("sm_active_pct", "gpu", "SM active ratio (GPM, Hopper+)"),
    _pct("tensor_active_pct", "gpu", "Tensor core active ratio (GPM, Hopper+)"),
    _pct("dram_active_pct", "gpu", "DRAM active ratio (GPM, Hopper+)"),
    _m("process_count", "gpu", "count", "Compute processes on the GPU", 0, 100_000, "integer", integer=True),
)

HOST_METRICS: tuple[Metric, ...] = (
    _pct("cpu_util_pct", "host", "CPU utilisation, all cores"),
    _pct("cpu_iowait_pct", "host", "CPU time waiting on I/O"),
    _m("load1", "host", "load", "1-minute load average", 0, 1_000_000),
    _bytes("mem_used_bytes", "host", "Host memory used"),
    _bytes("mem_available_bytes", "host", "Host memory available"),
    _bytes("swap_used_bytes", "host", "Swap used"),
    _rate("disk_read_bytes_s", "host", "Disk read throughput"),
    _rate("disk_write_bytes_s", "host", "Disk write throughput"),
    _pct("disk_busy_pct", "host", "Busiest disk's busy time"),
    _rate("net_rx_bytes_s", "host", "Network receive throughput"),
    _rate("net_tx_bytes_s", "host", "Network transmit throughput"),
    _m("net_rtt_ms", "host", "milliseconds", "Round-trip time to the Switchyard server", 0, 600_000),
)

INFERENCE_METRICS: tuple[Metric, ...] = (
    _m("requests_running", "inference", "count", "Requests being processed", 0, 10_000_000, "integer", integer=True),
    _m("requests_waiting", "inference", "count", "Requests waiting in the server queue", 0, 10_000_000, "integer",
       integer=True),
    _pct("kv_cache_usage_pct", "inference", "KV cache in use"),
    _m("prompt_tokens_s", "inference", "tokens_per_second", "Prompt tokens processed", 0, 1e9),
    _m("generation_tokens_s", "inference", "tokens_per_second", "Tokens generated", 0, 1e9),
    _secs("ttft_p50_s", "Time to first token, median over the interval"),
    _secs("ttft_p95_s", "Time to first token, p95 over the interval"),
    _secs("itl_p50_s", "Inter-token latency, median over the interval"),
    _secs("e2e_p95_s", "End-to-end request latency, p95 over the interval"),
    _secs("queue_time_p95_s", "Time in the server queue, p95 over the interval"),
    _pct("prefix_cache_hit_pct", "inference", "Prefix cache hit rate over the interval"),
    _count("preemptions_total", "inference", "Preemptions since server start"),
    _m("request_errors_s", "inference", "requests_per_second", "Failed requests per second", 0, 1e9),
)

NODE_METRICS: tuple[Metric, ...] = HOST_METRICS + INFERENCE_METRICS
ALL_METRICS: tuple[Metric, ...] = GPU_METRICS + NODE_METRICS
BY_NAME: dict[str, Metric] = {m.name: m for m in ALL_METRICS}
GPU_NAMES: frozenset[str] = frozenset(m.name for m in GPU_METRICS)
HOST_NAMES: frozenset[str] = frozenset(m.name for m in HOST_METRICS)
INFERENCE_NAMES: frozenset[str] = frozenset(m.name for m in INFERENCE_METRICS)

# Clock event (throttle) reason bits, as NVML defines them; decoded to words on the node page and in alerts.
CLOCK_EVENT_REASONS: dict[int, str] = {
    0x1: "GPU idle",
    0x2: "applications clocks setting",
    0x4: "SW power cap",
    0x8: "HW slowdown",
    0x10: "sync boost",
    0x20: "SW thermal slowdown",
    0x40: "HW thermal slowdown",
    0x80: "HW power brake slowdown",
    0x100: "display clock setting",
}


# The reasons that mean a GPU is being slowed down (power or thermal); idle and clock settings are normal. The
# overview's "needs attention" list and the alerts' `throttled` series both read it.
THROTTLE_BITS = 0x4 | 0x8 | 0x20 | 0x40 | 0x80


def decode_clock_reasons(mask: int | None) -> list[str]:
    if not mask:
        return []
    return [word for bit, word in CLOCK_EVENT_REASONS.items() if mask & bit]
