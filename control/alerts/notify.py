"""Alert rows in the Alertmanager shape, and the once-per-transition notifications.

Notified: a transition to firing (unless silenced), a transition to resolved (if its firing was notified, even
when silenced since: a receiver must never be left with an incident that ended), and a still-firing alert every
`repeat_interval_s` (unless silenced). Each is claimed by a compare-and-set UPDATE on `notified`/`notified_at` in
the evaluator's transaction, so a rerun or a second evaluator never sends one twice.
"""

from __future__ import annotations

from collections import defaultdict
from datetime import datetime, timedelta
from typing import Any

from django.conf import settings

from control.alerts.models import Alert
from control.webhooks.events import emit
from control.webhooks.formats import ZERO_TIME

CHUNK = 100


def _iso(ts: datetime | None) -> str:
    return ts.isoformat(timespec="milliseconds").replace("+00:00", "Z") if ts else ZERO_TIME


def as_alertmanager(a: Alert, status: str | None = None) -> dict[str, Any]:
    status = status or ("resolved" if a.state == Alert.State.RESOLVED else "firing")
    return {
        "status": status,
        "labels": a.labels,
        "annotations": {**a.annotations, "value": "" if a.value is None else f"{a.value:g}"},
        "startsAt": _iso(a.active_at),
        "endsAt": _iso(a.resolved_at) if status == "resolved" else ZERO_TIME,
        "generatorURL": f"{settings.EXTERNAL_URL.rstrip('/')}/alerts/?rule={a.rule}",
        "fingerprint": a.fingerprint,
    }


def _claim(a: Alert, to: str, now: datetime, repeat: bool = False) -> bool:
    qs = Alert.objects.filter(pk=a.pk, notified=a.notified)
    if repeat:
        qs = qs.filter(notified_at=a.notified_at)
    return bool(qs.update(notified=to, notified_at=now))


def send(now: datetime, repeat_s: dict[str, int]) -> list[Alert]:
    """Claim and queue every due notification; returns the alerts notified. Call inside the evaluator's
    transaction (emit() then queues the deliveries in it)."""
    due: dict[str, list[dict[str, Any]]] = defaultdict(list)
    sent: list[Alert] = []
    for a in Alert.objects.filter(state=Alert.State.FIRING, silenced=False).exclude(notified="firing"):
        if _claim(a, "firing", now):
            due[a.rule].append(as_alertmanager(a, "firing"))
            sent.append(a)
    for a in Alert.objects.filter(state=Alert.State.RESOLVED, notified="firing"):
        if _claim(a, "resolved", now):
            due[a.rule].append(as_alertmanager(a, "resolved"))
            sent.append(a)
    for rule, every in repeat_s.items():
        if every <= 0:
            continue
        stale = Alert.objects.filter(rule=rule, state=Alert.State.FIRING, silenced=False, notified="firing",
                                     notified_at__lte=now - timedelta(seconds=every))
        for a in stale:
            if _claim(a, "firing", now, repeat=True):
                due[a.rule].append(as_alertmanager(a, "firing"))
                sent.append(a)
    for rule in sorted(due):  # one message per rule (as Alertmanager groups by alertname), 100 alerts at most
        alerts = due[rule]
        for i in range(0, len(alerts), CHUNK):
            emit("alert", {"alerts": alerts[i:i + CHUNK]})
    return sent
