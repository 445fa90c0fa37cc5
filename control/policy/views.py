"""Pages: policy list, the editor of a kind (preview diff, reason, save), history with diffs and rollback."""

from __future__ import annotations

import json
from typing import Any

from django.contrib import messages
from django.http import Http404, HttpRequest, HttpResponse
from django.shortcuts import redirect, render
from django.views.decorators.http import require_POST

from control.policy import service
from control.policy.schemas import KINDS, DocumentError
from core import diffing
from core.api import MAX_BODY_BYTES
from core.audit.context import Origin
from core.roles import has_role, role_required

DESCRIPTIONS = {
    "scheduler": "How the gateway scores nodes: weighted scorers, filters, the picker (highest score, or the "
                 "round_robin / least_in_flight baselines).",
    "scaling": "When pools grow and shrink: thresholds, steps, cooldowns, stabilization, min/max, prediction.",
    "priorities": "Request classes, their queue limits, and which are shed at saturation.",
    "power": "GPU power caps per pool.",
    "alerts": "Alert rules on fleet metrics.",
    "deployment": "What each pool runs (engine, model, TP/PP, quantization, max model length) and how a change "
                  "is rolled out; checked against the pool's GPUs.",
}


def _kind(kind: str) -> str:
    if kind not in KINDS:
        raise Http404(f"unknown policy kind {kind!r}")
    return kind


@role_required("viewer")
def index(request: HttpRequest) -> HttpResponse:
    rows = [{"kind": k, "active": service.active(k), "description": DESCRIPTIONS[k]} for k in KINDS]
    return render(request, "policy/index.html", {"nav": "policies", "rows": rows})


@role_required("viewer")
def editor(request: HttpRequest, kind: str) -> HttpResponse:
    kind = _kind(kind)
    current = service.active(kind)
    ctx: dict[str, Any] = {"nav": "policies", "kind": kind, "description": DESCRIPTIONS[kind], "active": current,
                           "text": diffing.pretty(current.document), "parent": current.pk, "reason": "",
                           "error": None, "fields": {}, "changes": None, "rows": None}
    if request.method == "GET" and request.GET.get("document") and _can_operate(request):
        # A suggestion (the pool page's advisor) opens here filled in; nothing is stored until it is saved.
        ctx.update(text=request.GET["document"][:MAX_BODY_BYTES], reason=request.GET.get("reason", "")[:2000])
    if request.method == "POST":
        if not _can_operate(request):
            return render(request, "policy/editor.html", {**ctx, "error": "Editing needs the operator role."},
                          status=403)
        _handle_post(request, kind, ctx)
        if ctx.get("saved"):
            return redirect("policy-history", kind=kind)
        return render(request, "policy/editor.html", ctx, status=200 if not ctx["error"] else ctx["status"])
    return render(request, "policy/editor.html", ctx)


def _can_operate(request: HttpRequest) -> bool:
    return has_role(request.user, "operator")


def _handle_post(request: HttpRequest, kind: str, ctx: dict[str, Any]) -> None:
    raw = request.POST.get("document", "")
    ctx.update(text=raw, reason=request.POST.get("reason", ""), parent=request.POST.get("parent", ""), status=400)
    if len(raw.encode()) > MAX_BODY_BYTES:
        ctx["error"] = f"The document is larger than {MAX_BODY_BYTES} bytes."
        return
    try:
        document = json.loads(raw)
    except ValueError as exc:
        ctx["error"] = f"Not valid JSON: {exc}"
        return
    try:
        if request.POST.get("action") == "save":
            change = service.create_revision(kind, document, ctx["reason"], ctx["parent"],
                                             Origin.from_request(request))
            messages.success(request, f"Saved {kind} v{change.revision.version}; it is active now.")
            ctx["saved"] = True
            return
        result = service.preview(kind, document)
    except DocumentError as exc:
        ctx.update(error=str(exc), fields=exc.fields)
        return
    except service.PolicyError as exc:
        ctx.update(error=exc.message, fields=exc.fields, status=exc.status)
        return
    ctx.update(changes=result["changes"], rows=diffing.side_by_side(result["active"].document, result["document"]),
               status=200)


@role_required("viewer")
def history(request: HttpRequest, kind: str) -> HttpResponse:
    kind = _kind(kind)
    current = service.active(kind)
    revs = list(service.revisions(kind).select_related("parent", "restored_from")[:200])
    return render(request, "policy/history.html", {"nav": "policies", "kind": kind, "active": current,
                                                   "revisions": revs})


@role_required("viewer")
def diff(request: HttpRequest, kind: str) -> HttpResponse:
    kind = _kind(kind)
    try:
        a = service.get_revision(kind, request.GET.get("a"), "a")
        b = service.get_revision(kind, request.GET.get("b"), "b")
    except service.PolicyError as exc:
        raise Http404(exc.message) from None
    return render(request, "policy/diff.html", {
        "nav": "policies", "kind": kind, "a": a, "b": b, "changes": diffing.changes(a.document, b.document),
        "rows": diffing.side_by_side(a.document, b.document)})


@require_POST
@role_required("operator")
def rollback(request: HttpRequest, kind: str) -> HttpResponse:
    kind = _kind(kind)
    try:
        change = service.rollback(kind, request.POST.get("revision"), request.POST.get("reason", ""),
                                  Origin.from_request(request), expected_active=request.POST.get("active") or None)
    except service.PolicyError as exc:
        messages.error(request, f"Rollback refused: {exc.message}")
    else:
        src = change.revision.restored_from
        messages.success(request, f"Rolled {kind} back to the content of v{src.version if src else '?'}: "
                                  f"now v{change.revision.version}.")
    return redirect("policy-history", kind=kind)
