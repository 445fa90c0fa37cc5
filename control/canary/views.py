"""The canary page (/policies/scheduler/canary/): steps and progress, both arms over time, analysis runs, controls.
The page reads and acts through the REST API (static/switchyard/canary.js), like the scaling page."""

from __future__ import annotations

from django.http import Http404, HttpRequest, HttpResponse
from django.shortcuts import render

from control.canary import service
from core.roles import has_role, role_required


@role_required("viewer")
def canary_page(request: HttpRequest, kind: str) -> HttpResponse:
    if kind not in service.KINDS:
        raise Http404(f"no canary for the {kind!r} policy")
    return render(request, "canary/canary.html", {
        "nav": "policies", "kind": kind, "can_operate": has_role(request.user, "operator"),
        "canary": service.current(kind)})
