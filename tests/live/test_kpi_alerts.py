"""The overview's "Active alerts" tile counts firing alerts that nobody has silenced."""

from __future__ import annotations

import pytest
from django.utils import timezone

from control.alerts.models import Alert
from dashboard.live import frames

pytestmark = pytest.mark.django_db


def alert(fingerprint: str, state: str, silenced: bool = False) -> Alert:
    now = timezone.now()
    return Alert.objects.create(fingerprint=fingerprint, rule="gpu-temperature-high", labels={"node": fingerprint},
                                severity="critical", state=state, threshold=85.0, active_at=now,
                                fired_at=now if state == "firing" else None, silenced=silenced)


def kpi_alerts() -> int | None:
    frames.forget_nodes()  # the count is cached per process for a few seconds
    return frames.build("kpi", frames.make_view([], {}))["values"]["alerts_active"]


def test_tile_counts_firing_unsilenced_alerts_only() -> None:
    assert kpi_alerts() == 0
    alert("a1", "firing")
    alert("a2", "firing")
    alert("a3", "pending")
    alert("a4", "firing", silenced=True)
    alert("a5", "resolved")
    assert kpi_alerts() == 2
    Alert.objects.filter(fingerprint="a1").update(state="resolved", resolved_at=timezone.now())
    assert kpi_alerts() == 1
