"""The controller's one way to raise an `alert` webhook event (guard trips, provider failures, power drift).

Alert receivers expect Alertmanager-shaped alerts (control/webhooks/formats.py); the controller's alerts are not
rule-based, so each carries `alertname` = `switchyard_controller_<what>` and its own fingerprint.
"""

from __future__ import annotations

import hashlib
from datetime import UTC, datetime
from typing import Any

from django.conf import settings

from control.webhooks import events

ZERO_TIME = "0001-01-01T00:00:00Z"


def raise_alert(what: str, labels: dict[str, str], summary: str, description: str = "", *,
                severity: str = "warning", path: str = "/scaling/") -> None:
    """Queue one firing alert for the `alert` receivers. Call it inside the transaction that records the cause."""
    all_labels = {"alertname": f"switchyard_controller_{what}", "severity": severity, **labels}
    fingerprint = hashlib.sha256(repr(sorted(all_labels.items())).encode()).hexdigest()[:16]
    now = datetime.now(UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")
    alert: dict[str, Any] = {
        "status": "firing", "labels": all_labels,
        "annotations": {"summary": summary[:500], "description": description[:2000]},
        "startsAt": now, "endsAt": ZERO_TIME,
        "generatorURL": f"{settings.EXTERNAL_URL.rstrip('/')}{path}", "fingerprint": fingerprint,
    }
    events.emit("alert", {"alerts": [alert]})
