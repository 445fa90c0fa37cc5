"""Pages (admin): /webhooks/ receivers (create, secret shown once) and /webhooks/<id>/ delivery log + actions."""

from __future__ import annotations

from typing import Any

from django.contrib import messages
from django.http import Http404, HttpRequest, HttpResponse
from django.shortcuts import redirect, render
from django.views.decorators.http import require_POST

from control import once
from control.webhooks import service
from control.webhooks.models import EVENTS, FORMATS, Receiver
from core.audit.context import Origin
from core.roles import role_required


def _clean(value: str, limit: int = 2000) -> str:
    return value.replace("\x00", "").strip()[:limit]


def _context(**extra: Any) -> dict[str, Any]:
    return {"nav": "webhooks", "receivers": Receiver.objects.all(), "events": EVENTS, "formats": FORMATS,
            "once": once.nonce(), **extra}


@role_required("admin")
def receivers(request: HttpRequest) -> HttpResponse:
    if request.method == "POST":
        if not once.first_submission(request):
            messages.info(request, "That form was already sent and the receiver created; its secret was shown "
                                   "once. To get a new secret, set one on the receiver's page.")
            return redirect("webhooks")
        reason = _clean(request.POST.get("reason", ""))
        data: dict[str, Any] = {
            "name": _clean(request.POST.get("name", ""), 63), "url": _clean(request.POST.get("url", "")),
            "format": request.POST.get("format", "alertmanager"), "events": request.POST.getlist("events"),
            "internal": request.POST.get("internal") == "on"}
        if request.POST.get("secret"):
            data["secret"] = request.POST["secret"]
        if not reason:
            messages.error(request, "Creating a receiver needs a reason.")
            return render(request, "webhooks/list.html", _context(form=data), status=400)
        try:
            r, secret = service.create(data, Origin.from_request(request), reason)
        except service.ReceiverError as exc:
            messages.error(request, exc.message)
            return render(request, "webhooks/list.html", _context(form=data), status=exc.status)
        # The secret is in this one response only; a reload re-sends the form, which `once` turns away.
        return render(request, "webhooks/list.html", _context(created=(r, secret)), status=201)
    return render(request, "webhooks/list.html", _context())


def _receiver(pk: int) -> Receiver:
    r = Receiver.objects.filter(pk=pk).first()
    if r is None:
        raise Http404("no such webhook receiver")
    return r


@role_required("admin")
def receiver_detail(request: HttpRequest, pk: int) -> HttpResponse:
    r = _receiver(pk)
    deliveries = r.deliveries.prefetch_related("attempt_log").order_by("-id")[:50]
    return render(request, "webhooks/detail.html", _context(receiver=r, deliveries=deliveries))


@require_POST
@role_required("admin")
def receiver_action(request: HttpRequest, pk: int, action: str) -> HttpResponse:
    r = _receiver(pk)
    origin = Origin.from_request(request)
    if action == "test":
        service.send_test(r.pk, origin)
        messages.success(request, f"Test message queued for {r.name}; the log below shows the attempts.")
        return redirect("webhook-detail", pk=r.pk)
    reason = _clean(request.POST.get("reason", ""))
    if not reason:
        messages.error(request, f"To {action} {r.name}, give a reason.")
        return redirect("webhook-detail", pk=r.pk)
    try:
        if action in ("enable", "disable"):
            service.update(r.pk, {"enabled": action == "enable"}, origin, reason)
            messages.success(request, f"{r.name} {action}d.")
        elif action == "delete":
            service.delete(r.pk, origin, reason)
            messages.success(request, f"{r.name} deleted.")
            return redirect("webhooks")
        else:
            raise Http404("unknown action")
    except service.ReceiverError as exc:
        messages.error(request, exc.message)
    return redirect("webhook-detail", pk=r.pk)
