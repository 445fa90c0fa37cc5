"""Celery tasks: `deliver` (one delivery, queued on commit) and `deliver_due` (beat, every 5 s: retries)."""

from __future__ import annotations

from celery import shared_task

from control.webhooks import sender


@shared_task(ignore_result=True, name="control.webhooks.tasks.deliver")
def deliver(pk: int) -> str | None:
    return sender.deliver(pk)


@shared_task(ignore_result=True, name="control.webhooks.tasks.deliver_due")
def deliver_due() -> int:
    """Hand every due delivery to the workers (a slow receiver then holds up one worker, not this beat task).
    A row queued twice is still sent once: `deliver` claims it with a compare-and-set."""
    ids = sender.due()
    for pk in ids:
        try:
            deliver.delay(pk)
        except Exception:  # no broker: send here rather than not at all
            sender.deliver(pk)
    return len(ids)
