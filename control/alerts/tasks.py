"""Celery beat task `control.alerts.tasks.evaluate` (every 10 s, see settings.CELERY_BEAT_SCHEDULE)."""

from __future__ import annotations

from typing import Any

from celery import shared_task

from control.alerts import evaluator


@shared_task(ignore_result=True, name="control.alerts.tasks.evaluate")
def evaluate() -> dict[str, Any] | None:
    result = evaluator.evaluate()
    return None if result is None else vars(result)
