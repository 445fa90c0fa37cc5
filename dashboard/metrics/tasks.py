"""Celery beat tasks for storage upkeep (schedule in settings.CELERY_BEAT_SCHEDULE)."""

from __future__ import annotations

from celery import shared_task

from dashboard.metrics import partitions, rollups


@shared_task(ignore_result=True)
def rollup_minutes() -> int:
    return rollups.rollup_minutes()


@shared_task(ignore_result=True)
def rollup_hours() -> int:
    return rollups.rollup_hours()


@shared_task(ignore_result=True)
def ensure_partitions() -> int:
    return len(partitions.ensure_partitions())


@shared_task(ignore_result=True)
def apply_retention() -> list[str]:
    return partitions.apply_retention()
