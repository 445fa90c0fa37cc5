"""Creating, changing and deleting receivers (admin), each audited in the same transaction; the send-test action.

Audit events carry the receiver's settings but never its secret (only whether it changed) nor its URL's path or query:
a Slack or Teams incoming-webhook URL is itself the credential, and viewers read the audit."""

from __future__ import annotations

import re
import secrets
from typing import Any

from django.db import transaction
from django.utils import timezone

from control.webhooks import sender
from control.webhooks.addresses import InvalidURL, check_url
from control.webhooks.models import EVENTS, FORMATS, Delivery, Receiver
from core.audit.context import Origin
from core.audit.record import record
from core.audit.redact import redact_url

NAME_RE = re.compile(r"^[a-z0-9]([a-z0-9._-]{0,61}[a-z0-9])?$")
FIELDS = ("name", "url", "secret", "format", "events", "enabled", "internal")


class ReceiverError(ValueError):
    def __init__(self, message: str, fields: dict[str, str] | None = None, status: int = 400) -> None:
        super().__init__(message)
        self.message, self.fields, self.status = message, fields or {}, status


def facts(r: Receiver) -> dict[str, Any]:
    """What the audit keeps of a receiver: the URL as scheme, host and fingerprint (a changed URL still shows)."""
    return {"name": r.name, "url": redact_url(r.url), "format": r.format, "events": list(r.events), "enabled": r.enabled,
            "internal": r.internal, "disabled_reason": r.disabled_reason}


def _clean(data: dict[str, Any], partial: bool, current: Receiver | None = None) -> dict[str, Any]:
    unknown = sorted(set(data) - set(FIELDS) - {"reason"})
    if unknown:
        raise ReceiverError(f"unknown field(s): {', '.join(unknown)}", {k: "unknown field" for k in unknown})
    out: dict[str, Any] = {}
    if "name" in data or not partial:
        name = data.get("name")
        if not isinstance(name, str) or not NAME_RE.match(name):
            raise ReceiverError("name must be 1-63 lowercase letters, digits, '.', '_' or '-'",
                                {"name": "lowercase letters, digits, . _ - (1-63)"})
        clash = Receiver.objects.filter(name=name).exclude(pk=current.pk if current else None).exists()
        if clash:
            raise ReceiverError(f"a receiver named {name!r} exists", {"name": "already used"}, status=409)
        out["name"] = name
    if "url" in data or not partial:
        try:
            out["url"] = check_url(data.get("url"))
        except InvalidURL as exc:
            raise ReceiverError(f"url: {exc}", {"url": str(exc)}) from None
    if "secret" in data:
        secret = data["secret"]
        if not isinstance(secret, str) or not 16 <= len(secret) <= 200 or not secret.isprintable():
            raise ReceiverError("secret must be 16-200 printable characters (leave it out to get a random one)",
                                {"secret": "16-200 printable characters"})
        out["secret"] = secret
    if "format" in data or not partial:
        fmt = data.get("format", "alertmanager")
        if fmt not in FORMATS:
            raise ReceiverError(f"format must be one of {', '.join(FORMATS)}", {"format": f"one of {FORMATS}"})
        out["format"] = fmt
    if "events" in data or not partial:
        events = data.get("events", ["alert"])
        if not isinstance(events, list) or not events or any(e not in EVENTS for e in events):
            raise ReceiverError(f"events must be a non-empty list of {', '.join(EVENTS)}",
                                {"events": f"a non-empty list of {', '.join(EVENTS)}"})
        out["events"] = sorted(set(events), key=EVENTS.index)
    for flag in ("enabled", "internal"):
        if flag in data:
            if not isinstance(data[flag], bool):
                raise ReceiverError(f"{flag} must be true or false", {flag: "a boolean"})
            out[flag] = data[flag]
    return out


def create(data: dict[str, Any], origin: Origin, reason: str) -> tuple[Receiver, str]:
    """A new receiver; returns it and its secret (the only time the secret is shown)."""
    values = _clean(data, partial=False)
    values.setdefault("secret", secrets.token_urlsafe(32))
    with transaction.atomic():
        r = Receiver.objects.create(**values, created_by=origin.actor)
        record(origin, "webhook.create", f"webhook:{r.pk}", reason, after=facts(r))
    return r, values["secret"]


def update(pk: int, data: dict[str, Any], origin: Origin, reason: str) -> Receiver:
    with transaction.atomic():
        r = Receiver.objects.select_for_update().filter(pk=pk).first()
        if r is None:
            raise ReceiverError(f"no webhook receiver {pk}", status=404)
        values = _clean(data, partial=True, current=r)
        before = facts(r)
        for key, value in values.items():
            setattr(r, key, value)
        if values.get("enabled") is True:  # re-enabled by an admin: start counting afresh
            r.consecutive_failures, r.disabled_reason = 0, ""
        elif values.get("enabled") is False and not r.disabled_reason:
            r.disabled_reason = f"disabled by {origin.actor}"
        r.updated = timezone.now()
        r.save()
        record(origin, "webhook.update", f"webhook:{r.pk}", reason, before=before, after=facts(r),
               details={"secret_changed": "secret" in values})
    return r


def delete(pk: int, origin: Origin, reason: str) -> None:
    with transaction.atomic():
        r = Receiver.objects.select_for_update().filter(pk=pk).first()
        if r is None:
            raise ReceiverError(f"no webhook receiver {pk}", status=404)
        record(origin, "webhook.delete", f"webhook:{r.pk}", reason, before=facts(r))
        r.delete()


def send_test(pk: int, origin: Origin) -> Delivery:
    """Queue a `test` event to one receiver (sent even while it is disabled, so an admin can check a fix)."""
    r = Receiver.objects.filter(pk=pk).first()
    if r is None:
        raise ReceiverError(f"no webhook receiver {pk}", status=404)
    with transaction.atomic():
        return sender.queue(r, "test", {
            "summary": f"Test message for receiver {r.name}, sent by {origin.actor}", "severity": "info",
            "description": "If you can read this, Switchyard can reach this receiver and the signature checks out.",
            "at": timezone.now().isoformat()})
