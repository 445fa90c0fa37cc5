"""Celery beat tasks of the controller (see settings.CELERY_BEAT_SCHEDULE); each loop runs only in the leader.

`tick` (every 15 s): autoscaling per pool, power caps, the guard. `forecast` (every 5 min): refit the predictive
pools' forecasts. A loop that finds another controller holding its lock returns at once and does nothing.
"""

from __future__ import annotations

import logging
from typing import Any

from celery import shared_task
from django.utils import timezone

from control.controller.lock import leader

log = logging.getLogger(__name__)


@shared_task(ignore_result=True, name="control.controller.tasks.tick")
def tick() -> dict[str, Any] | None:
    import importlib

    def run(module: str, fn: str, now: Any) -> Any:
        result = getattr(importlib.import_module(f"control.controller.{module}"), fn)(now)
        return vars(result) if hasattr(result, "__dict__") else result

    with leader("tick") as held:
        if not held:
            return None
        now = timezone.now()
        out: dict[str, Any] = {}
        # Each part is independent: a failure in one (logged) must not keep the others from running.
        for name, module, fn in (("scaling", "loop", "tick"), ("power", "power", "reconcile"),
                                 ("guard_open", "guard", "open_watches"), ("guard", "guard", "check"),
                                 ("rollout", "rollout", "reconcile")):
            try:
                out[name] = run(module, fn, now)
            except Exception as exc:
                log.exception("controller loop %s failed", name)
                out[name] = f"error: {exc}"
        return {k: (v if isinstance(v, dict | str) else repr(v)) for k, v in out.items()}


@shared_task(ignore_result=True, name="control.controller.tasks.forecast")
def forecast() -> dict[str, Any] | None:
    from control.controller import predict

    with leader("forecast") as held:
        if not held:
            return None
        return predict.refit()
