"""Celery beat task: fold the gateway request log into minute rows (every 10 s, settings.CELERY_BEAT_SCHEDULE)."""

from __future__ import annotations

from typing import Any

from celery import shared_task

from control.routing import aggregate as agg


@shared_task(ignore_result=True)
def aggregate() -> dict[str, Any]:
    r = agg.run()
    return {"processed": r.processed, "skipped": r.skipped, "rows": r.rows, "locked_out": r.locked_out,
            "last_id": r.last_id}
