"""The pool's deployment page: what the pool should run (the active deployment revision's entry and its command
line), what its nodes say they run, the rollout in progress batch by batch, the rollout history, and revert
(operator: re-applies the revision active before a rollout)."""

from __future__ import annotations

import json
from typing import Any
from urllib.parse import urlencode

from django.contrib import messages
from django.http import Http404, HttpRequest, HttpResponse
from django.shortcuts import redirect, render
from django.urls import reverse
from django.utils import timezone
from django.views.decorators.http import require_POST

from control.controller import advisor, rollout
from control.controller.models import PoolProvider, Rollout
from control.policy.deployment import command
from core.audit.context import Origin
from core.roles import role_required
from dashboard.fleet.models import Node, Pool
from dashboard.metrics.latest import latest_of


def batch_rows(r: Rollout) -> list[dict[str, Any]]:
    """Each batch of a rollout with where it stands: done, the step in progress, failed, or waiting."""
    rows = []
    for i, nodes in enumerate(r.batches):
        if i < r.batch:
            state = "done"
        elif i == r.batch and r.state == Rollout.State.RUNNING:
            state = r.step
        elif i == r.batch and r.state == Rollout.State.FAILED:
            state = "failed"
        else:
            state = "waiting" if r.state == Rollout.State.RUNNING else "not started"
        rows.append({"index": i + 1, "nodes": nodes, "state": state})
    return rows


@role_required("viewer")
def pool_deployment(request: HttpRequest, pool: str) -> HttpResponse:
    p = Pool.objects.filter(name=pool).first()
    if p is None:
        raise Http404(f"no pool named {pool!r}")
    rev, entry = rollout.active_entry(p.name)
    names = list(Node.objects.filter(pool=p).exclude(state=Node.State.REMOVED).values_list("name", "state"))
    try:
        snaps = latest_of([n for n, _ in names])
    except Exception:  # noqa: BLE001 - Redis down: the page still shows the policy and the rollouts
        snaps = {}
    nodes = [{"name": n, "state": s, "serving": (snaps.get(n) or {}).get("serving")} for n, s in names]
    history = list(Rollout.objects.filter(pool=p).select_related("revision", "previous")[:50])
    running = next((r for r in history if r.state == Rollout.State.RUNNING), None)
    binding = PoolProvider.objects.filter(pool=p).first()
    suggestions = [{"s": s, "evidence": "; ".join(s.evidence), "editor": reverse("policy-editor", args=["deployment"])
                    + "?" + urlencode({"document": json.dumps(s.document, indent=2),
                                       "reason": f"advisor ({p.name}): {s.title}; {'; '.join(s.evidence)}"})}
                   for s in advisor.advise(p.name, timezone.now())]
    return render(request, "controller/deployment.html", {
        "nav": "scaling", "pool": p, "revision": rev, "entry": entry,
        "command": " ".join(command(entry)) if entry else "", "nodes": nodes, "running": running,
        "batches": batch_rows(running) if running else [], "history": history,
        "last_batches": batch_rows(history[0]) if history and history[0].state == Rollout.State.FAILED else [],
        "provider": binding.kind if binding else "", "suggestions": suggestions,
    })


@require_POST
@role_required("operator")
def revert(request: HttpRequest, pk: int) -> HttpResponse:
    r = Rollout.objects.select_related("pool").filter(pk=pk).first()
    if r is None:
        raise Http404(f"no rollout {pk}")
    reason = request.POST.get("reason", "").replace("\x00", "").strip()[:2000]
    try:
        new = rollout.revert(pk, reason, Origin.from_request(request))
    except rollout.RolloutError as exc:
        messages.error(request, f"revert of rollout #{pk}: {exc}")
    else:
        messages.success(request, f"{r.pool.name}: re-applying deployment v{new.revision.version} (the content of "
                                  f"v{r.previous.version if r.previous else '?'}) as rollout #{new.pk}.")
    return redirect("pool-deployment", pool=r.pool.name)
