"""firing_counts(): the overview's alert tile. Silenced alerts are not counted (someone is already on them)."""

from __future__ import annotations

from django.db.models import Count

from control.alerts.models import SEVERITIES, Alert


def firing_counts() -> dict[str, int]:
    rows = (Alert.objects.filter(state=Alert.State.FIRING, silenced=False).values("severity")
            .annotate(n=Count("id")))
    counts = dict.fromkeys(SEVERITIES, 0)
    for row in rows:
        counts[row["severity"]] = counts.get(row["severity"], 0) + row["n"]
    return counts
