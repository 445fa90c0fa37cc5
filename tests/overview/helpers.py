"""Data for the overview tests: samples pushed through ingest, rolled up by the real rollup code."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Any

from control.policy import service
from core.audit.context import Origin
from dashboard.metrics import rollups
from tests.conftest import full_sample


def sample(seq: int, ts: datetime, util: float, power_w: float, tokens_s: float, gpus: int = 2) -> dict[str, Any]:
    s = full_sample(seq, ts, gpus=gpus, base=20.0)
    for g in s["gpus"]:
        g.update(gpu_util_pct=util, power_w=power_w)
    s["inference"].update(generation_tokens_s=tokens_s, requests_waiting=3, ttft_p95_s=0.25, e2e_p95_s=2.5)
    return s


def minute_ago(n: int) -> datetime:
    return rollups.floor_to(datetime.now(UTC), timedelta(minutes=1)) - timedelta(minutes=n)


def roll_up(lo: datetime, hi: datetime) -> None:
    rollups.aggregate("1m", lo, hi)


def activate_scheduler(actor: str, reason: str) -> Any:
    """A new active scheduler revision, audited as policy.create by `actor`."""
    active = service.active("scheduler")
    doc = dict(active.document)
    return service.create_revision("scheduler", doc, reason, active.pk, Origin(actor=actor, request_id="t-1",
                                                                                client=None)).revision
