"""Silences: operators mute alerts whose labels match, until a time, with a reason (audited)."""

from __future__ import annotations

from datetime import datetime, timedelta
from typing import Any

from django.db import transaction
from django.db.models import Q
from django.utils import timezone
from pydantic import ValidationError

from control.alerts.models import Silence
from control.alerts.schema import Matcher
from core.audit.context import Origin
from core.audit.record import record
from core.diffing import error_path

MAX_DURATION = timedelta(days=30)


class SilenceError(ValueError):
    def __init__(self, message: str, fields: dict[str, str] | None = None, status: int = 400) -> None:
        super().__init__(message)
        self.message, self.fields, self.status = message, fields or {}, status


def check_matchers(raw: Any) -> list[dict[str, str]]:
    if not isinstance(raw, list) or not raw:
        raise SilenceError("a silence needs at least one matcher (to mute everything, match alertname =~ .*)",
                           {"matchers": "a non-empty list of {label, op, value}"})
    if len(raw) > 16:
        raise SilenceError("at most 16 matchers", {"matchers": "at most 16"})
    out = []
    for i, item in enumerate(raw):
        try:
            out.append(Matcher.model_validate(item).model_dump())
        except ValidationError as exc:
            err = exc.errors(include_url=False)[0]
            path = error_path(("matchers", i, *[p for p in err["loc"] if not (isinstance(p, str) and "[" in p)]))
            msg = err["msg"].removeprefix("Value error, ")
            raise SilenceError(f"{path}: {msg}", {path: msg}) from None
    return out


def active(now: datetime | None = None) -> list[Silence]:
    now = now or timezone.now()
    return list(Silence.objects.filter(expired_at__isnull=True, starts_at__lte=now, ends_at__gt=now))


def matching(silences: list[Silence], labels: dict[str, str]) -> Silence | None:
    for s in silences:
        if all(Matcher.model_validate(m).matches(labels) for m in s.matchers):
            return s
    return None


def facts(s: Silence) -> dict[str, Any]:
    return {"matchers": s.matchers, "starts_at": s.starts_at.isoformat(), "ends_at": s.ends_at.isoformat(),
            "expired_at": s.expired_at.isoformat() if s.expired_at else None}


def create(matchers: Any, ends_at: datetime, reason: str, origin: Origin, now: datetime | None = None) -> Silence:
    now = now or timezone.now()
    clean = check_matchers(matchers)
    if ends_at <= now:
        raise SilenceError("ends_at must be in the future", {"ends_at": "in the past"})
    if ends_at - now > MAX_DURATION:
        raise SilenceError("a silence may last at most 30 days", {"ends_at": "at most 30 days ahead"})
    with transaction.atomic():
        s = Silence.objects.create(matchers=clean, starts_at=now, ends_at=ends_at, reason=reason,
                                   created_by=origin.actor)
        record(origin, "silence.create", f"silence:{s.pk}", reason, after=facts(s))
    return s


def expire(pk: int, reason: str, origin: Origin) -> Silence:
    with transaction.atomic():
        s = Silence.objects.select_for_update().filter(pk=pk).first()
        if s is None:
            raise SilenceError(f"no silence {pk}", status=404)
        now = timezone.now()
        if not s.active_at(now) and s.starts_at <= now:
            raise SilenceError(f"silence {pk} has already ended", {"silence": "already ended"}, status=409)
        before = facts(s)
        s.expired_at, s.expired_by, s.expire_reason = now, origin.actor, reason
        s.save(update_fields=["expired_at", "expired_by", "expire_reason"])
        record(origin, "silence.expire", f"silence:{s.pk}", reason, before=before, after=facts(s))
    return s


def listing(state: str | None = None) -> Any:
    now = timezone.now()
    qs = Silence.objects.all()
    if state == "active":
        qs = qs.filter(expired_at__isnull=True, starts_at__lte=now, ends_at__gt=now)
    elif state == "expired":
        qs = qs.filter(Q(expired_at__isnull=False) | Q(ends_at__lte=now))
    return qs
