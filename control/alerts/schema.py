"""The `alerts` policy document: alert rules. Owned by control.alerts (the evaluator is its reader).

A rule compares one metric with a threshold for every series in its scope and fires after the condition held for
`for_s` seconds; it resolves once the condition has been false for `keep_firing_for_s`. Series come from the
latest sample of each node: per-GPU metrics give one series per GPU, host and inference metrics one per node;
a coarser scope (node, pool, fleet) aggregates them (`aggregate`, max by default). Matchers filter the series
by label (pool, node, gpu) before aggregation.
"""

from __future__ import annotations

import re
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationInfo, field_validator, model_validator

from agents.catalogue import GPU_METRICS, HOST_METRICS, INFERENCE_METRICS
from control.alerts import templating

NAME = r"^[a-z0-9]([a-z0-9._-]{0,61}[a-z0-9])?$"
WEEK = 7 * 86400


class Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", allow_inf_nan=False, strict=False)


# Derived metrics the default rules need, computed by the evaluator (control/alerts/series.py).
DERIVED_GPU = {
    "throttle_power_or_thermal": "1 when clocks_event_reasons has a power or thermal slowdown bit "
                                 "(SW power cap, HW slowdown, SW/HW thermal, HW power brake), else 0",
    "ecc_or_remap": "1 when the GPU reports uncorrectable ECC errors or a pending row remap, else 0",
}
DERIVED_NODE = {
    "node_last_seen_age_s": "seconds since the node's last accepted sample (Node.last_seen)",
}
GPU_METRIC_NAMES = tuple(m.name for m in GPU_METRICS) + tuple(DERIVED_GPU)
NODE_METRIC_NAMES = tuple(m.name for m in (*HOST_METRICS, *INFERENCE_METRICS)) + tuple(DERIVED_NODE)
ALERT_METRICS = GPU_METRIC_NAMES + NODE_METRIC_NAMES
MATCH_LABELS = ("alertname", "severity", "pool", "node", "gpu")


class Matcher(Strict):
    """Prometheus-style label matcher; regular expressions must match the whole value."""

    label: Literal["alertname", "severity", "pool", "node", "gpu"]
    op: Literal["=", "!=", "=~", "!~"] = "="
    value: str = Field(max_length=200)

    @field_validator("value")
    @classmethod
    def _regex_compiles(cls, value: str, info: ValidationInfo) -> str:
        if info.data.get("op") in ("=~", "!~"):
            try:
                re.compile(value)
            except re.error as exc:
                raise ValueError(f"invalid regular expression {value!r}: {exc}") from None
        return value

    def matches(self, labels: dict[str, str]) -> bool:
        value = labels.get(self.label, "")
        if self.op == "=":
            return value == self.value
        if self.op == "!=":
            return value != self.value
        found = re.fullmatch(self.value, value) is not None
        return found if self.op == "=~" else not found


class AlertRule(Strict):
    name: str = Field(pattern=NAME)
    metric: str
    scope: Literal["gpu", "node", "pool", "fleet"] = "node"
    comparison: Literal[">", ">=", "<", "<=", "==", "!="]
    threshold: float
    for_s: int = Field(0, ge=0, le=WEEK, description="the condition must hold this long before the alert fires")
    keep_firing_for_s: int = Field(0, ge=0, le=WEEK,
                                   description="keep firing this long after the condition cleared (flap guard)")
    severity: Literal["info", "warning", "critical"] = "warning"
    aggregate: Literal["max", "min", "avg", "sum"] = Field(
        "max", description="how per-GPU or per-node values combine for a coarser scope")
    matchers: list[Matcher] = Field(default_factory=list, max_length=16)
    summary: str = Field("", max_length=500, description="template: {labels.node}, {value:.1f}, {threshold} ...")
    description: str = Field("", max_length=2000, description="template, as summary")
    repeat_interval_s: int = Field(0, ge=0, le=WEEK, description="re-notify a still-firing alert this often; 0: never")
    enabled: bool = True

    @field_validator("metric")
    @classmethod
    def _known_metric(cls, value: str) -> str:
        if value not in ALERT_METRICS:
            raise ValueError(f"unknown metric {value!r}; see /api/v1/metrics/catalogue (or the derived metrics "
                             f"{', '.join((*DERIVED_GPU, *DERIVED_NODE))})")
        return value

    @field_validator("summary", "description")
    @classmethod
    def _template(cls, value: str) -> str:
        return templating.check(value)

    @model_validator(mode="after")
    def _scope_fits_metric(self) -> AlertRule:
        if self.scope == "gpu" and self.metric not in GPU_METRIC_NAMES:
            raise ValueError(f"scope gpu needs a per-GPU metric; {self.metric} is per node (use scope node)")
        if self.repeat_interval_s and self.repeat_interval_s < 60:
            raise ValueError("repeat_interval_s must be 0 (never) or at least 60")
        return self


class Alerts(Strict):
    rules: list[AlertRule] = Field(default_factory=list, max_length=500)

    @field_validator("rules")
    @classmethod
    def _unique_names(cls, rules: list[AlertRule]) -> list[AlertRule]:
        names = [r.name for r in rules]
        dupes = sorted({n for n in names if names.count(n) > 1})
        if dupes:
            raise ValueError(f"rule names must be unique; repeated: {', '.join(dupes)}")
        return rules
