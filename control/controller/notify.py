"""The controller's one way to build and raise `alert` webhook events (guard trips, provider failures, power drift).

Alert receivers expect Alertmanager-shaped alerts (control/webhooks/formats.py). The controller's alerts are not
rule-based: each carries `alertname` = `switchyard_controller_<what>`, and a fingerprint from its labels (or from a
key of the caller's, when one incident must not merge with a later one) that ties its firing and resolved messages.
"""

from __future__ import annotations

import hashlib
from datetime import UTC, datetime
from typing import Any

from django.conf import settings

from control.webhooks import events

ZERO_TIME = "0001-01-01T00:00:00Z"


def _iso(t: datetime) -> str:
    return t.astimezone(UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")


def alert(what: str, labels: dict[str, str], summary: str, description: str = "", *, severity: str = "warning",
          status: str = "firing", started: datetime | None = None, ended: datetime | None = None,
          path: str = "/scaling/", key: str | None = None) -> dict[str, Any]:
    """One Alertmanager-shaped alert; `ended` is required for a resolved one."""
    all_labels = {"alertname": f"switchyard_controller_{what}", "severity": severity, **labels}
    basis = key if key is not None else repr(sorted(all_labels.items()))
    return {
        "status": status, "labels": all_labels,
        "annotations": {"summary": summary[:500], "description": description[:2000]},
        "startsAt": _iso(started or datetime.now(UTC)),
        "endsAt": _iso(ended) if status == "resolved" and ended is not None else ZERO_TIME,
        "generatorURL": f"{settings.EXTERNAL_URL.rstrip('/')}{path}",
        "fingerprint": hashlib.sha256(basis.encode()).hexdigest()[:16],
    }


def send(alerts: list[dict[str, Any]]) -> None:
    """Queue alerts for the `alert` receivers. Call it inside the transaction that records the cause."""
    if alerts:
        events.emit("alert", {"alerts": alerts})


def raise_alert(what: str, labels: dict[str, str], summary: str, description: str = "", *,
                severity: str = "warning", path: str = "/scaling/") -> None:
    """One firing alert, queued at once."""
    send([alert(what, labels, summary, description, severity=severity, path=path)])
