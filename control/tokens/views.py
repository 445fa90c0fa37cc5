"""The "API tokens" page: a user lists, creates (secret shown once) and revokes their own tokens."""

from __future__ import annotations

from django.contrib import messages
from django.http import Http404, HttpRequest, HttpResponse
from django.shortcuts import redirect, render
from django.views.decorators.http import require_POST

from control import once
from control.tokens import service
from core.audit.context import Origin
from core.roles import has_role, role_required
from dashboard.accounts.models import UserToken


def _clean(value: str, limit: int) -> str:
    return value.replace("\x00", "").strip()[:limit]


@role_required("viewer")
def tokens(request: HttpRequest) -> HttpResponse:
    if request.method == "POST":
        if not once.first_submission(request):
            messages.info(request, "That form was already sent and the token created; its secret was shown once. "
                                   "If you did not copy it, revoke it and create another.")
            return redirect("account-tokens")
        name, reason = _clean(request.POST.get("name", ""), 100), _clean(request.POST.get("reason", ""), 2000)
        if not name or not reason:
            messages.error(request, "A new token needs a name and a reason (e.g. 'grafana', 'CI deploy job').")
            return redirect("account-tokens")
        priority_class = _clean(request.POST.get("priority_class", ""), 63)
        try:
            token, plain = service.issue(request.user, name, Origin.from_request(request), reason, priority_class,
                                         by_admin=has_role(request.user, "admin"))
        except (service.UnknownClass, service.ClassNotAllowed) as exc:
            messages.error(request, str(exc))
            return redirect("account-tokens")
        # The secret goes into this one response only; a reload re-sends the form, which `once` turns away.
        return render(request, "account/tokens.html", _context(request, created=(token, plain)), status=201)
    return render(request, "account/tokens.html", _context(request))


def _context(request: HttpRequest, created: tuple[UserToken, str] | None = None) -> dict[str, object]:
    return {"nav": "tokens", "tokens": UserToken.objects.filter(user=request.user), "created": created,
            "once": once.nonce()}


@require_POST
@role_required("viewer")
def revoke(request: HttpRequest, pk: int) -> HttpResponse:
    token = UserToken.objects.filter(pk=pk, user=request.user).first()
    if token is None:  # someone else's token looks exactly like a missing one
        raise Http404("no such token of yours")
    reason = _clean(request.POST.get("reason", ""), 2000)
    if not reason:
        messages.error(request, f"Revoking {token.prefix}… needs a reason.")
    elif service.revoke(token, Origin.from_request(request), reason):
        messages.success(request, f"Token {token.prefix}… revoked; clients using it now get 401.")
    else:
        messages.info(request, f"Token {token.prefix}… was already revoked.")
    return redirect("account-tokens")
