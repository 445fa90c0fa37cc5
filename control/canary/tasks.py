"""Celery beat task: canary analysis (every 5 s; each canary runs when its own interval_s has passed)."""

from __future__ import annotations

from typing import Any

from celery import shared_task

from control.controller.lock import leader


@shared_task(ignore_result=True, name="control.canary.tasks.analyse")
def analyse() -> dict[str, Any] | None:
    from control.canary import analysis

    with leader("canary") as held:
        if not held:
            return None
        return {"canaries": analysis.tick()}
