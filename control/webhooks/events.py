"""emit(event, payload): fan an event out to every enabled receiver subscribed to it (one Delivery row each)."""

from __future__ import annotations

from typing import Any

from control.webhooks.models import EVENTS, Delivery, Receiver
from control.webhooks.sender import _check_payload, queue


def emit(event: str, payload: dict[str, Any]) -> list[Delivery]:
    """Queue `payload` for the receivers subscribed to `event` (alert, scaling, rollback, job). Call it inside
    the transaction that made the change: the rows commit with it and are sent after it commits."""
    if event not in EVENTS:
        raise ValueError(f"unknown event {event!r}; the events are {', '.join(EVENTS)}")
    _check_payload(event, payload)
    return [queue(r, event, payload) for r in Receiver.objects.filter(enabled=True, events__contains=[event])]
