"""Request bodies: the Alertmanager webhook format (version "4"), a Slack incoming-webhook body, plain JSON.

An `alert` event's payload is `{"alerts": [<alert>...]}` where each alert already has the Alertmanager shape
(status, labels, annotations, startsAt, endsAt, generatorURL, fingerprint; see control/alerts/notify.py). Other
events (scaling, rollback, job, test) carry free-form payloads; in the Alertmanager format they become one
alert named `switchyard_<event>` so that an unchanged Alertmanager receiver still shows them, and the payload itself
rides along under the extra top-level key `switchyard` (receivers ignore keys they do not know).
"""

from __future__ import annotations

import hashlib
from datetime import UTC, datetime
from typing import Any

from django.conf import settings

MAX_ALERTS = 100  # per message; the rest are counted in truncatedAlerts, as Alertmanager's max_alerts does
ZERO_TIME = "0001-01-01T00:00:00Z"
COLOURS = {"critical": "#d7263d", "warning": "#f5a623", "info": "#4a90d9", "resolved": "#2e7d32"}


def _now() -> str:
    return datetime.now(UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")


def event_alerts(event: str, payload: dict[str, Any]) -> list[dict[str, Any]]:
    """The alerts an event stands for (an `alert` event's own, or one synthetic alert for any other event)."""
    if event == "alert":
        return list(payload.get("alerts") or [])
    labels = {"alertname": f"switchyard_{event}", "severity": str(payload.get("severity") or "info"),
              "event": event}
    for key in ("pool", "node", "kind", "action", "state", "job"):
        value = payload.get(key)
        if isinstance(value, str | int) and not isinstance(value, bool):
            labels[key] = str(value)[:200]
    summary = str(payload.get("summary") or f"Switchyard {event} event")[:500]
    fingerprint = hashlib.sha256(repr(sorted(labels.items())).encode()).hexdigest()[:16]
    return [{"status": "firing", "labels": labels,
             "annotations": {"summary": summary, "description": str(payload.get("description") or "")[:2000]},
             "startsAt": str(payload.get("at") or _now()), "endsAt": ZERO_TIME,
             "generatorURL": str(payload.get("url") or settings.EXTERNAL_URL), "fingerprint": fingerprint}]


def _common(maps: list[dict[str, str]]) -> dict[str, str]:
    if not maps:
        return {}
    common = dict(maps[0])
    for m in maps[1:]:
        common = {k: v for k, v in common.items() if m.get(k) == v}
    return common


def alertmanager(receiver: str, event: str, payload: dict[str, Any]) -> dict[str, Any]:
    alerts = event_alerts(event, payload)
    shown = alerts[:MAX_ALERTS]
    common_labels = _common([a.get("labels") or {} for a in alerts])
    group_labels = {k: v for k, v in common_labels.items() if k == "alertname"}
    body: dict[str, Any] = {
        "version": "4",
        "receiver": receiver,
        "status": "firing" if any(a.get("status") == "firing" for a in alerts) else "resolved",
        "groupLabels": group_labels,
        "commonLabels": common_labels,
        "commonAnnotations": _common([a.get("annotations") or {} for a in alerts]),
        "externalURL": settings.EXTERNAL_URL,
        "groupKey": "{}:{" + ",".join(f'{k}="{v}"' for k, v in sorted(group_labels.items())) + "}",
        "truncatedAlerts": len(alerts) - len(shown),
        "alerts": shown,
    }
    if event != "alert":
        body["switchyard"] = {"event": event, "payload": payload}
    return body


def slack(receiver: str, event: str, payload: dict[str, Any]) -> dict[str, Any]:
    alerts = event_alerts(event, payload)
    attachments = []
    for a in alerts[:20]:  # Slack shows at most a handful usefully; the count says how many more there are
        labels, notes = a.get("labels") or {}, a.get("annotations") or {}
        resolved = a.get("status") == "resolved"
        title = f"[{'RESOLVED' if resolved else 'FIRING'}] {labels.get('alertname', event)}"
        where = " ".join(f"{k}={labels[k]}" for k in ("pool", "node", "gpu") if k in labels)
        attachments.append({
            "color": COLOURS["resolved"] if resolved else COLOURS.get(labels.get("severity", ""), COLOURS["info"]),
            "title": title + (f" ({where})" if where else ""),
            "title_link": a.get("generatorURL") or settings.EXTERNAL_URL,
            "text": notes.get("summary", "") + (f"\n{notes['description']}" if notes.get("description") else ""),
            "footer": f"Switchyard · {labels.get('severity', 'info')} · since {a.get('startsAt', '')}",
        })
    firing = sum(1 for a in alerts if a.get("status") == "firing")
    text = (f"{firing} firing, {len(alerts) - firing} resolved" if event == "alert"
            else str(payload.get("summary") or f"Switchyard {event} event"))
    if len(alerts) > 20:
        text += f" ({len(alerts) - 20} more not shown)"
    return {"text": text, "attachments": attachments}


def plain(event: str, payload: dict[str, Any], delivery_id: int) -> dict[str, Any]:
    """Ad-hoc callbacks (e.g. a batch job's completion): the event and its payload as they are."""
    return {"event": event, "delivery": delivery_id, "sent_at": _now(), "data": payload}


def render(fmt: str, receiver: str, event: str, payload: dict[str, Any], delivery_id: int) -> dict[str, Any]:
    if fmt == "slack":
        return slack(receiver, event, payload)
    if fmt == "alertmanager":
        return alertmanager(receiver, event, payload)
    return plain(event, payload, delivery_id)
