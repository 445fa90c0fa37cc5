"""The scaling page: pools (desired/actual/min/max), the action log with reasons, forecast versus actual, power;
manual scale and revert for operators (forms posting here, CSRF-protected, audited through the same service)."""

from __future__ import annotations

from django.contrib import messages
from django.db.models import Exists, OuterRef
from django.http import HttpRequest, HttpResponse
from django.shortcuts import redirect, render
from django.views.decorators.http import require_POST

from control.controller import actions, timeline
from control.controller.api import pools_overview
from control.controller.models import ScalingAction
from core.audit.context import Origin
from core.roles import role_required


@role_required("viewer")
def scaling(request: HttpRequest) -> HttpResponse:
    from control.controller import power

    pools = pools_overview()
    # A reverted action offers no second revert: that would scale the pool again.
    reverted = Exists(ScalingAction.objects.filter(reverts=OuterRef("pk")).exclude(state__in=("failed", "cancelled")))
    log = ScalingAction.objects.select_related("pool").annotate(reverted=reverted)[:100]
    return render(request, "controller/scaling.html", {
        "nav": "scaling", "pools": pools, "actions": log, "power": power.power_summary(),
        "forecast_pools": [p["pool"] for p in pools if p["provider"] and p["predictive"]],
        "timeline_ranges": list(timeline.RANGES),
    })


def _clean(value: str) -> str:
    return value.replace("\x00", "").strip()[:2000]


@require_POST
@role_required("operator")
def scale(request: HttpRequest, pool: str) -> HttpResponse:
    raw = _clean(request.POST.get("size", ""))
    reason = _clean(request.POST.get("reason", ""))
    if not raw.isdigit():
        messages.error(request, f"{pool}: size must be a whole number of nodes, got {raw[:20]!r}.")
        return redirect("scaling")
    try:
        action = actions.scale_by_hand(pool, int(raw), reason, Origin.from_request(request))
    except actions.ActionError as exc:
        messages.error(request, f"{pool}: {exc}")
        return redirect("scaling")
    messages.success(request, f"{pool}: scaling {action.from_size} → {action.to_size} (action #{action.pk}).")
    return redirect("scaling")


@require_POST
@role_required("operator")
def revert(request: HttpRequest, pk: int) -> HttpResponse:
    try:
        action = actions.revert(pk, _clean(request.POST.get("reason", "")), Origin.from_request(request))
    except actions.ActionError as exc:
        messages.error(request, f"revert #{pk}: {exc}")
        return redirect("scaling")
    messages.success(request, f"reverting #{pk}: {action.pool.name} {action.from_size} → {action.to_size} "
                              f"(action #{action.pk}).")
    return redirect("scaling")
