"""The node-actions page: every node with its state, and drain/cordon/uncordon buttons for operators."""

from __future__ import annotations

from django.contrib import messages
from django.http import Http404, HttpRequest, HttpResponse
from django.shortcuts import redirect, render
from django.utils.http import url_has_allowed_host_and_scheme
from django.views.decorators.http import require_POST

from control.nodes.service import ACTIONS, apply
from core.audit.context import Origin
from core.roles import role_required
from dashboard.fleet.models import Node


@role_required("viewer")
def node_actions(request: HttpRequest) -> HttpResponse:
    nodes = Node.objects.select_related("pool").order_by("pool__name", "name")
    return render(request, "nodes/actions.html", {"nav": "node-actions", "nodes": nodes, "actions": list(ACTIONS)})


@require_POST
@role_required("operator")
def node_action(request: HttpRequest, name: str, action: str) -> HttpResponse:
    if action not in ACTIONS:
        raise Http404(f"unknown action {action!r}")
    # The node page posts here too and wants to come back to itself; only local URLs are followed.
    back = request.POST.get("next", "")
    if not url_has_allowed_host_and_scheme(back, allowed_hosts={request.get_host()}, require_https=request.is_secure()):
        back = "node-actions"
    reason = request.POST.get("reason", "").replace("\x00", "").strip()[:2000]
    if not reason:
        messages.error(request, f"{action} {name}: a reason is required.")
        return redirect(back)
    try:
        out = apply(name, action, reason, Origin.from_request(request))
    except Node.DoesNotExist:
        raise Http404(f"no node named {name!r}") from None
    if out.changed:
        messages.success(request, f"{name}: {out.previous} → {out.node.state}.")
    else:
        messages.info(request, f"{name} already is {out.node.state}; nothing changed.")
    return redirect(back)
