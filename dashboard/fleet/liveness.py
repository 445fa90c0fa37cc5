"""Whether a node is up, stale or down, from the age of its latest sample."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

from django.conf import settings


def status_of(latest: dict[str, Any] | None, interval_s: int | None = None, now: datetime | None = None) -> str:
    """'up' (reporting), 'stale' (missed STALE_AFTER_INTERVALS pushes) or 'down' (never reported / 10x silent)."""
    if not latest or not latest.get("ts"):
        return "down"
    now = now or datetime.now(UTC)
    age = (now - datetime.fromisoformat(latest["ts"])).total_seconds()
    interval = interval_s or settings.AGENT_INTERVAL_S
    if age <= interval * settings.STALE_AFTER_INTERVALS:
        return "up"
    if age <= interval * settings.STALE_AFTER_INTERVALS * 10:
        return "stale"
    return "down"
