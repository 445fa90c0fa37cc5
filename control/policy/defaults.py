"""The documents every installation starts with (revision 1 of each kind)."""

from __future__ import annotations

import copy
from typing import Any

from control.alerts.defaults import DEFAULT_ALERTS

_PRIORITY_DEFAULTS = [
    # Most important first. Batch work is sheddable: at saturation it gets 429 + Retry-After, never a slot.
    {"name": "realtime", "sheddable": False, "queue_limit": 1000, "queue_timeout_s": 5.0},
    {"name": "standard", "sheddable": False, "queue_limit": 5000, "queue_timeout_s": 30.0},
    {"name": "batch", "sheddable": True, "queue_limit": 20000, "queue_timeout_s": 600.0},
]

DEFAULTS: dict[str, dict[str, Any]] = {
    # score = 0.6*gpu_free + 0.3*(1 - cpu_load) - 0.1*latency + 5*(1 - expected_wait) + 2*prefix_affinity
    # (+ 3*(1 - expected_ttft) for a streamed request): the classic formula plus the speed-aware expected wait,
    # weighted to dominate under load on mixed hardware (bench/routing.py), plus cache affinity (bench/prefix.py; a
    # prompt with no match is routed as without it), plus, for streamed answers, how soon the node starts answering.
    # Queue depth, KV cache and in-flight are ready, weight 0. See docs/gateway.md.
    "scheduler": {
        "scorers": [
            {"metric": "gpu_free", "weight": 0.6, "invert": False},
            {"metric": "cpu_load", "weight": 0.3, "invert": True},
            {"metric": "latency", "weight": -0.1, "invert": False},
            {"metric": "queue_depth", "weight": 0.0, "invert": True},
            {"metric": "kv_cache", "weight": 0.0, "invert": True},
            {"metric": "in_flight", "weight": 0.0, "invert": True},
            {"metric": "expected_wait", "weight": 5.0, "invert": True},
            {"metric": "prefix_affinity", "weight": 2.0, "invert": False},
            # Streamed requests only: the time to first token the node's streamed requests had (issue 14).
            {"metric": "expected_ttft", "weight": 3.0, "invert": True},
        ],
        "filters": {
            "require_model": True,
            "exclude_states": ["draining", "cordoned"],
            "max_gpu_util_pct": 99.0,
            "max_queue_depth": 256,
            "max_kv_cache_pct": 98.0,
            "max_stale_s": 15,
            "require_inference_up": True,
        },
        "picker": {"strategy": "highest", "tie_break": "random", "tie_epsilon": 0.01,
                   # cache_aware only (SGLang router's documented defaults)
                   "cache_threshold": 0.5, "balance_abs_threshold": 32, "balance_rel_threshold": 1.1},
        "latency": {"source": "rtt", "normalise": "fixed", "scale_ms": 100.0},
        # Requests sent since a node's last sample count against it whatever the weights (see docs/gateway.md).
        "load": {"node_capacity": 32, "burst_correction": 1.0},
        "retry": {"max_attempts": 3, "connect_timeout_s": 2.0, "first_byte_timeout_s": 60.0, "read_timeout_s": 120.0},
        "quarantine": {"failures": 3, "cooldown_s": 30.0},
        "cache": {"enabled": True, "ttl_s": 300, "max_entry_bytes": 1048576, "shared": False},
        "shedding": {"retry_after_s": 2},
        # The gateway's approximate prefix index (prefix_affinity scorer, cache_aware picker; docs/gateway.md).
        "prefix": {"block_chars": 256, "index_blocks": 10000, "min_match_blocks": 2, "max_blocks": 128,
                   "source": "sent"},
        # No SLO unless the operator sets one: the scheduler cannot know what latency counts as good (docs/gateway.md).
        "slo": {"latency_s": None, "margin": 0.8},
    },
    "scaling": {
        "default": {
            "min_nodes": 1,
            "max_nodes": 64,
            "tolerance": 0.1,
            "rules": [
                {"metric": "gpu_util_pct", "threshold": 85.0, "step": 2, "cooldown_s": 300, "window_s": 60},
                {"metric": "queue_length", "threshold": 50.0, "step": 1, "cooldown_s": 600, "window_s": 60},
            ],
            "scale_down": {"stabilization_window_s": 300, "step": 1, "gpu_util_below_pct": 30.0,
                           "drain_timeout_s": 300},
            "predictive": {"enabled": False, "horizon_min": 10, "metric": "request_rate", "per_node": None,
                           "boot_time_s": 180, "buffer_min": 2},
        },
        "pools": {},
        # After a policy change the controller compares the watch window with the hour before and rolls back.
        "guard": {"enabled": True, "watch_window_s": 600, "baseline_s": 3600, "min_requests": 50,
                  "p95_latency_ratio": 1.5, "error_rate_increase_pct": 5.0, "queue_ratio": 2.0, "queue_floor": 10.0,
                  "kinds": ["scheduler", "priorities", "power", "scaling"]},
    },
    "priorities": {"classes": _PRIORITY_DEFAULTS, "default_class": "standard"},
    "power": {"default": {"mode": "uncapped", "cap_w": None, "pct": None, "peak_start_hour": 12, "peak_end_hour": 18},
              "pools": {}},
    "alerts": DEFAULT_ALERTS,
    # No pool is managed until an operator says what it runs (docs/deployments.md).
    "deployment": {"pools": {}},
}


def default_document(kind: str) -> dict[str, Any]:
    return copy.deepcopy(DEFAULTS[kind])
