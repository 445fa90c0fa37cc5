"""The `alerts` policy document: alert rules. Owned by control.alerts (the evaluator is its reader)."""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator

from agents.catalogue import GPU_METRICS, HOST_METRICS, INFERENCE_METRICS

NAME = r"^[a-z0-9]([a-z0-9._-]{0,61}[a-z0-9])?$"


class Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", allow_inf_nan=False, strict=False)


ALERT_METRICS = tuple(m.name for m in (*GPU_METRICS, *HOST_METRICS, *INFERENCE_METRICS))


class AlertRule(Strict):
    name: str = Field(pattern=NAME)
    metric: str
    scope: Literal["gpu", "node", "pool", "fleet"] = "node"
    comparison: Literal[">", ">=", "<", "<="]
    threshold: float
    for_s: int = Field(0, ge=0, le=7 * 86400)
    severity: Literal["info", "warning", "critical"] = "warning"

    @field_validator("metric")
    @classmethod
    def _known_metric(cls, value: str) -> str:
        if value not in ALERT_METRICS:
            raise ValueError(f"unknown metric {value!r}; see /api/v1/metrics/catalogue")
        return value


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


