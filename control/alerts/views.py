"""The alerts page (viewer): firing, pending, silences, resolved history; operators silence and expire here."""

from __future__ import annotations

from datetime import timedelta
from typing import Any

from django.contrib import messages
from django.http import HttpRequest, HttpResponse
from django.shortcuts import redirect, render
from django.utils import timezone
from django.views.decorators.http import require_POST

from control.alerts import silences
from control.alerts.models import Alert
from core.audit.context import Origin
from core.roles import role_required

DURATIONS = ((3600, "1 hour"), (4 * 3600, "4 hours"), (86400, "1 day"), (7 * 86400, "7 days"))
MATCH_LABELS = ("alertname", "node", "pool", "gpu", "severity")


def _clean(value: str, limit: int = 2000) -> str:
    return value.replace("\x00", "").strip()[:limit]


@role_required("viewer")
def alerts(request: HttpRequest) -> HttpResponse:
    rule = _clean(request.GET.get("rule", ""), 63)
    live = Alert.objects.filter(state__in=["firing", "pending"]).order_by("state", "-fired_at", "-id")
    history = Alert.objects.filter(state="resolved").order_by("-resolved_at")
    if rule:
        live, history = live.filter(rule=rule), history.filter(rule=rule)
    context: dict[str, Any] = {
        "nav": "alerts", "rule": rule,
        "firing": [a for a in live if a.state == "firing"], "pending": [a for a in live if a.state == "pending"],
        "history": history[:50], "silences": silences.listing("active"),
        "ended_silences": silences.listing("expired")[:20], "durations": DURATIONS, "labels": MATCH_LABELS,
    }
    return render(request, "alerts/index.html", context)


@require_POST
@role_required("operator")
def silence_create(request: HttpRequest) -> HttpResponse:
    matchers = []
    for i in range(4):
        label, value = request.POST.get(f"label{i}", ""), _clean(request.POST.get(f"value{i}", ""), 200)
        if label and value:
            matchers.append({"label": label, "op": request.POST.get(f"op{i}", "="), "value": value})
    reason = _clean(request.POST.get("reason", ""))
    try:
        seconds = int(request.POST.get("duration_s", "3600"))
    except ValueError:
        seconds = 0
    if not reason:
        messages.error(request, "A silence needs a reason (who is on it, which ticket).")
        return redirect("alerts")
    if seconds not in dict(DURATIONS):
        messages.error(request, "Pick one of the offered durations.")
        return redirect("alerts")
    try:
        s = silences.create(matchers, timezone.now() + timedelta(seconds=seconds), reason,
                            Origin.from_request(request))
    except silences.SilenceError as exc:
        messages.error(request, f"Not silenced: {exc.message}")
        return redirect("alerts")
    messages.success(request, f"Silence {s.pk} active until {timezone.localtime(s.ends_at):%Y-%m-%d %H:%M}.")
    return redirect("alerts")


@require_POST
@role_required("operator")
def silence_expire(request: HttpRequest, pk: int) -> HttpResponse:
    reason = _clean(request.POST.get("reason", ""))
    if not reason:
        messages.error(request, "Ending a silence needs a reason.")
        return redirect("alerts")
    try:
        silences.expire(pk, reason, Origin.from_request(request))
    except silences.SilenceError as exc:
        messages.error(request, exc.message)
        return redirect("alerts")
    messages.success(request, f"Silence {pk} ended; matching alerts notify again at the next evaluation.")
    return redirect("alerts")
