"""The default `alerts` policy document (revision 1 of a new installation; revision 2 of one seeded empty).

Kept in normalised form (every field present, as the schema stores it) so the stored seed equals what
validate() returns; tests/alerts/test_rules.py checks that.
"""

from __future__ import annotations

from typing import Any


def _rule(name: str, metric: str, scope: str, comparison: str, threshold: float, for_s: int, severity: str,
          summary: str, description: str, keep_firing_for_s: int = 0) -> dict[str, Any]:
    return {"name": name, "metric": metric, "scope": scope, "comparison": comparison, "threshold": threshold,
            "for_s": for_s, "keep_firing_for_s": keep_firing_for_s, "severity": severity, "aggregate": "max",
            "matchers": [], "summary": summary, "description": description, "repeat_interval_s": 0,
            "enabled": True}


DEFAULT_RULES: list[dict[str, Any]] = [
    _rule("gpu-temperature-high", "temp_c", "gpu", ">", 85.0, 120, "warning",
          "GPU {labels.gpu} of {labels.node} at {value:.0f} °C",
          "Above {threshold:g} °C for 2 minutes: check cooling and airflow; the GPU will slow down at its limit."),
    _rule("gpu-xid", "xid_count", "gpu", ">", 0.0, 0, "critical",
          "XID error on GPU {labels.gpu} of {labels.node}",
          "The driver reported an XID (see xid_last on the node page). Drain the node if it repeats.",
          keep_firing_for_s=300),
    _rule("gpu-ecc-or-remap", "ecc_or_remap", "gpu", ">", 0.0, 0, "critical",
          "Uncorrectable ECC error or row remap pending on GPU {labels.gpu} of {labels.node}",
          "Drain the node and reset the GPU; replace it if uncorrectable errors continue."),
    _rule("node-not-reporting", "node_last_seen_age_s", "node", ">", 30.0, 0, "critical",
          "{labels.node} has not reported for {value:.0f} s",
          "No sample accepted for over {threshold:g} s: the agent, the host or the network is down."),
    _rule("queue-high", "requests_waiting", "node", ">", 50.0, 60, "warning",
          "{labels.node}: {value:.0f} requests waiting",
          "Queue above {threshold:g} for 1 minute: the pool needs capacity or load is misrouted."),
    _rule("ttft-p95-high", "ttft_p95_s", "node", ">", 2.0, 120, "warning",
          "{labels.node}: p95 time to first token {value:.2f} s",
          "p95 TTFT above {threshold:g} s for 2 minutes."),
    _rule("gpu-throttled", "throttle_power_or_thermal", "gpu", ">", 0.0, 300, "warning",
          "GPU {labels.gpu} of {labels.node} throttled (power or thermal)",
          "Power or thermal slowdown for 5 minutes: check power caps, cooling and the clock event reasons."),
]

DEFAULT_ALERTS: dict[str, Any] = {"rules": DEFAULT_RULES}
