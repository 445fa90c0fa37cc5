"""The canary page (/policies/scheduler/canary/): steps and progress, both arms over time, analysis runs, controls;
below, the pool-scoped scaling canary (/policies/scaling/canary/ leads there).
The page reads and acts through the REST API (static/switchyard/canary.js), like the scaling page."""

from __future__ import annotations

from django.http import Http404, HttpRequest, HttpResponse
from django.shortcuts import redirect, render
from django.urls import reverse

from control.canary import service
from core.roles import has_role, role_required


@role_required("viewer")
def canary_page(request: HttpRequest, kind: str) -> HttpResponse:
    if kind not in service.KINDS:
        raise Http404(f"no canary for the {kind!r} policy")
    if kind == "scaling":  # one canary page; the scaling canary is its second section
        return redirect(reverse("policy-canary-page", args=["scheduler"]) + "#scaling-canary")
    return render(request, "canary/canary.html", {
        "nav": "policies", "kind": kind, "can_operate": has_role(request.user, "operator"),
        "canary": service.current(kind), "scaling": service.current("scaling")})
