"""Pages: the audit log with filters, and one event with its before/after diff and the rest of its request."""

from __future__ import annotations

from django.core.paginator import Paginator
from django.http import HttpRequest, HttpResponse
from django.shortcuts import get_object_or_404, render

from core import diffing
from core.api import ApiError
from core.audit.api import filter_events
from core.audit.models import AuditEvent
from core.roles import role_required

FILTER_NAMES = ("actor", "action", "target", "since", "until", "request_id")


@role_required("viewer")
def audit_list(request: HttpRequest) -> HttpResponse:
    values = {n: request.GET.get(n, "").replace("\x00", "").strip()[:200] for n in FILTER_NAMES}
    error = None
    try:
        qs = filter_events(AuditEvent.objects.all(), lambda n: values.get(n) or None)
        page = Paginator(qs, 50).get_page(request.GET.get("page"))
    except ApiError as exc:
        error = exc.detail["error"]
        page = Paginator(AuditEvent.objects.none(), 50).get_page(1)
    query = "&".join(f"{k}={v}" for k, v in values.items() if v)
    return render(request, "audit/list.html", {"nav": "audit", "page": page, "filters": values, "error": error,
                                               "query": query, "actions": _known_actions()})


def _known_actions() -> list[str]:
    return list(AuditEvent.objects.order_by().values_list("action", flat=True).distinct()[:100])


@role_required("viewer")
def audit_detail(request: HttpRequest, pk: int) -> HttpResponse:
    event = get_object_or_404(AuditEvent, pk=pk)
    siblings = AuditEvent.objects.filter(request_id=event.request_id).exclude(pk=event.pk).order_by("time", "id")
    return render(request, "audit/detail.html", {
        "nav": "audit", "event": event, "siblings": siblings,
        "changes": diffing.changes(event.before, event.after),
        "rows": diffing.side_by_side(event.before, event.after),
        "details": diffing.pretty(event.details)})
