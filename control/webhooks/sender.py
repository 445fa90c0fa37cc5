"""The ONE way Switchyard makes outbound HTTP requests to user-given URLs (webhooks, job callbacks).

Everything goes through a Delivery row: `send_callback()` and `events.emit()` queue rows and return at once; the
Celery task `deliver` claims a row with a compare-and-set UPDATE (so two workers never send one delivery twice),
posts it through `post()`, records the attempt, and either finishes the row or schedules a retry with exponential
backoff. `post()` is the single place with an HTTP client: timeouts, no redirects, the address guard of
addresses.GuardedBackend (private and loopback addresses refused at connect time unless the receiver is internal).
"""

from __future__ import annotations

import logging
import random
import time
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any
from urllib.parse import urlsplit

import httpx
import orjson
from django.db import transaction
from django.db.models import F
from django.utils import timezone

from control.webhooks import formats
from control.webhooks.addresses import AddressRefused, GuardedBackend, InvalidURL, check_url
from control.webhooks.models import EVENTS, Attempt, Delivery, Receiver
from control.webhooks.verify import HEADER, sign
from core.audit.context import Origin
from core.audit.record import record
from core.audit.redact import redact_text

log = logging.getLogger(__name__)

USER_AGENT = "Switchyard-Webhook/1"
TIMEOUT = httpx.Timeout(10.0, connect=5.0)
MAX_PAYLOAD_BYTES = 512 * 1024  # what a caller may queue (a job notice carries up to 64 Ki characters of result)
MAX_BODY_BYTES = 1024 * 1024  # what goes on the wire after formatting
EXCERPT_BYTES = 4096  # of the receiver's answer, read and kept (the rest is never read)
MAX_ATTEMPTS = 6
BACKOFF_BASE_S = 10.0  # 10, 20, 40, 80, 160 s between the 6 attempts (~5 minutes in all)
BACKOFF_MAX_S = 3600.0
AUTO_DISABLE_AFTER = 5  # deliveries in a row that ended failed
STALE_SENDING_S = 300  # a row 'sending' this long belongs to a worker that died; it is retried
RETRY_STATUSES = frozenset({408, 429})


class TransportError(Exception):
    """A request that got no usable HTTP answer. `permanent`: retrying cannot help (refused address, bad URL)."""

    def __init__(self, message: str, permanent: bool) -> None:
        super().__init__(message)
        self.message = message
        self.permanent = permanent


@dataclass
class Response:
    status: int
    excerpt: str
    retry_after_s: float | None
    location: str


def post(url: str, body: bytes, headers: dict[str, str], *, internal: bool = False) -> Response:
    """POST `body` to `url` once. Raises TransportError when no HTTP answer came back."""
    try:
        check_url(url)
    except InvalidURL as exc:
        raise TransportError(str(exc), permanent=True) from None
    transport = httpx.HTTPTransport(retries=0)
    # httpx has no public hook for the socket layer; the pool's backend is where connections are opened, so the
    # guard goes there (tests/webhooks/test_ssrf.py proves it is consulted, including for names resolving to
    # loopback).
    transport._pool._network_backend = GuardedBackend(internal)
    try:
        with httpx.Client(transport=transport, timeout=TIMEOUT, follow_redirects=False, trust_env=False) as client, \
                client.stream("POST", url, content=body, headers=headers) as answer:
            data = b""
            for chunk in answer.iter_raw():
                data += chunk
                if len(data) >= EXCERPT_BYTES:
                    break
            return Response(answer.status_code, data[:EXCERPT_BYTES].decode("utf-8", "replace")[:1000],
                            _retry_after(answer.headers.get("retry-after")), answer.headers.get("location", ""))
    except AddressRefused as exc:
        raise TransportError(str(exc), permanent=True) from None
    except httpx.TimeoutException as exc:
        raise TransportError(f"timed out ({type(exc).__name__})", permanent=False) from None
    except httpx.UnsupportedProtocol as exc:
        raise TransportError(f"unsupported URL: {exc}", permanent=True) from None
    except httpx.HTTPError as exc:
        raise TransportError(f"{type(exc).__name__}: {exc}"[:500], permanent=False) from None
    except OSError as exc:  # e.g. a TLS context problem below httpx
        raise TransportError(f"{type(exc).__name__}: {exc}"[:500], permanent=False) from None


def _retry_after(value: str | None) -> float | None:
    try:
        return max(0.0, min(float(value), BACKOFF_MAX_S)) if value else None
    except ValueError:
        return None  # the HTTP-date form: fall back to our own backoff


# --- queueing ---------------------------------------------------------------------------------------------------
def _check_payload(event: str, payload: Any) -> None:
    if event not in (*EVENTS, "test"):
        raise ValueError(f"unknown event {event!r}; the events are {', '.join(EVENTS)}")
    if not isinstance(payload, dict):
        raise ValueError("a webhook payload must be a JSON object")
    size = len(orjson.dumps(payload))
    if size > MAX_PAYLOAD_BYTES:
        raise ValueError(f"webhook payload is {size} bytes; the limit is {MAX_PAYLOAD_BYTES}")


def _enqueue(ids: list[int]) -> None:
    def send() -> None:
        from control.webhooks.tasks import deliver

        for pk in ids:
            try:
                deliver.delay(pk)
            except Exception:  # broker down: the row stays pending and deliver_due picks it up
                log.warning("could not enqueue delivery %s; deliver_due will retry it", pk, exc_info=True)

    transaction.on_commit(send)


def queue(receiver: Receiver | None, event: str, payload: dict[str, Any], *, url: str = "",
          secret: str = "") -> Delivery:
    """One Delivery row, sent by a Celery worker after the caller's transaction commits."""
    _check_payload(event, payload)
    delivery = Delivery.objects.create(
        receiver=receiver, receiver_name=receiver.name if receiver else "", url=receiver.url if receiver else url,
        event=event, payload=payload, secret="" if receiver else secret, max_attempts=MAX_ATTEMPTS)
    _enqueue([delivery.pk])
    return delivery


def send_callback(url: str, event: str, payload: dict[str, Any], secret: str = "") -> Delivery:
    """Queue a POST of `{"event", "delivery", "sent_at", "data": payload}` to an ad-hoc URL (e.g. a job's
    callback_url). Never internal: private and loopback addresses are refused. Signed when `secret` is given.
    Raises InvalidURL (a ValueError) for a URL that can never be used, so callers can refuse it up front."""
    return queue(None, event, payload, url=check_url(url), secret=secret)


# --- delivering -------------------------------------------------------------------------------------------------
def claim(pk: int, now: datetime | None = None) -> bool:
    """Compare-and-set pending -> sending; True for the one caller that won the row."""
    now = now or timezone.now()
    return bool(Delivery.objects.filter(pk=pk, state=Delivery.State.PENDING, next_attempt_at__lte=now).update(
        state=Delivery.State.SENDING, attempts=F("attempts") + 1, claimed_at=timezone.now()))


def backoff_s(attempt: int) -> float:
    """Seconds before the retry after failed attempt number `attempt` (1-based), with up to 20 % jitter."""
    base = min(BACKOFF_BASE_S * 2 ** (attempt - 1), BACKOFF_MAX_S)
    return base * (1 + random.random() * 0.2)


def _request(delivery: Delivery) -> tuple[str, bytes, dict[str, str], bool]:
    receiver = delivery.receiver
    if receiver is not None:
        url, fmt, secret, internal, name = receiver.url, receiver.format, receiver.secret, receiver.internal, \
            receiver.name
    else:
        url, fmt, secret, internal, name = delivery.url, "json", delivery.secret, False, ""
    body = orjson.dumps(formats.render(fmt, name, delivery.event, delivery.payload, delivery.pk))
    headers = {"Content-Type": "application/json", "User-Agent": USER_AGENT,
               "X-Switchyard-Event": delivery.event, "X-Switchyard-Delivery": str(delivery.pk)}
    if secret:
        headers[HEADER] = sign(secret, body)
    return url, body, headers, internal


def deliver(pk: int, now: datetime | None = None) -> str | None:
    """Send one delivery if it is due and this caller wins it; returns its new state (None: not ours to send)."""
    if not claim(pk, now):
        return None
    delivery = Delivery.objects.select_related("receiver").get(pk=pk)
    receiver = delivery.receiver
    if delivery.receiver_name and receiver is None:
        return _finish(delivery, "failed", None, "the receiver was deleted", "", 0.0, record_attempt=False)
    if receiver is not None and not receiver.enabled and delivery.event != "test":
        return _finish(delivery, "failed", None, f"receiver disabled: {receiver.disabled_reason or 'by an admin'}",
                       "", 0.0, record_attempt=False)
    url, body, headers, internal = _request(delivery)
    if len(body) > MAX_BODY_BYTES:
        return _finish(delivery, "failed", None, f"body is {len(body)} bytes; the limit is {MAX_BODY_BYTES}", "",
                       0.0, record_attempt=False)
    started = time.perf_counter()
    status: int | None = None
    excerpt = ""
    retry_after: float | None = None
    try:
        answer = post(url, body, headers, internal=internal)
        status, excerpt, retry_after = answer.status, answer.excerpt, answer.retry_after_s
        if 200 <= status < 300:
            outcome, error = "ok", ""
        elif status >= 500 or status in RETRY_STATUSES:
            outcome, error = "retry", f"HTTP {status}"
        elif 300 <= status < 400:
            outcome, error = "failed", f"HTTP {status}: redirects are not followed ({answer.location[:200]})"
        else:
            outcome, error = "failed", f"HTTP {status}: the receiver refused the request (not retried)"
    except TransportError as exc:
        outcome, error = ("failed" if exc.permanent else "retry"), exc.message
    duration_ms = (time.perf_counter() - started) * 1000
    log.info("webhook delivery %s to %s: %s %s", pk, urlsplit(url).hostname, status, error or "ok")
    if outcome == "retry" and delivery.attempts >= delivery.max_attempts:
        outcome, error = "failed", f"{error}; gave up after {delivery.attempts} attempts"
    return _finish(delivery, outcome, status, error, excerpt, duration_ms, retry_after=retry_after, now=now)


def _finish(delivery: Delivery, outcome: str, status: int | None, error: str, excerpt: str, duration_ms: float,
            *, record_attempt: bool = True, retry_after: float | None = None, now: datetime | None = None) -> str:
    now = now or timezone.now()
    with transaction.atomic():
        if record_attempt:
            Attempt.objects.create(delivery=delivery, number=delivery.attempts, duration_ms=round(duration_ms, 2),
                                   status=status, error=error[:500], body_excerpt=excerpt[:1000], outcome=outcome)
        fields: dict[str, Any] = {"last_status": status, "last_error": error[:500], "claimed_at": None}
        if outcome == "retry":
            wait = retry_after if retry_after is not None else backoff_s(delivery.attempts)
            fields.update(state=Delivery.State.PENDING, next_attempt_at=now + timedelta(seconds=wait))
        else:
            fields.update(state=Delivery.State.DONE if outcome == "ok" else Delivery.State.FAILED, finished=now)
        Delivery.objects.filter(pk=delivery.pk).update(**fields)
        if delivery.receiver_id is not None and delivery.event != "test" and outcome != "retry":
            _count(delivery.receiver_id, outcome == "ok", error)
    return str(fields["state"])


def _count(receiver_id: int, ok: bool, error: str) -> None:
    """Consecutive failed deliveries per receiver; AUTO_DISABLE_AFTER of them in a row disable it (audited)."""
    if ok:
        Receiver.objects.filter(pk=receiver_id).exclude(consecutive_failures=0).update(consecutive_failures=0)
        return
    Receiver.objects.filter(pk=receiver_id).update(consecutive_failures=F("consecutive_failures") + 1)
    receiver = Receiver.objects.select_for_update().get(pk=receiver_id)
    if receiver.enabled and receiver.consecutive_failures >= AUTO_DISABLE_AFTER:
        # The reason is audited (viewers read it): a redirect's Location or an error naming a URL keeps its host only.
        reason = (f"auto-disabled after {receiver.consecutive_failures} failed deliveries in a row; "
                  f"last error: {redact_text(error)}")[:500]
        receiver.enabled, receiver.disabled_reason, receiver.updated = False, reason, timezone.now()
        receiver.save(update_fields=["enabled", "disabled_reason", "updated"])
        record(Origin.system("webhooks"), "webhook.auto_disable", f"webhook:{receiver.pk}", reason,
               before={"enabled": True}, after={"enabled": False, "disabled_reason": reason},
               details={"name": receiver.name})


def due(now: datetime | None = None, limit: int = 200) -> list[int]:
    """Ids of pending deliveries whose time has come (and sending ones abandoned by a dead worker, reset first)."""
    now = now or timezone.now()
    Delivery.objects.filter(state=Delivery.State.SENDING,
                            claimed_at__lt=now - timedelta(seconds=STALE_SENDING_S)).update(
        state=Delivery.State.PENDING, claimed_at=None)
    return list(Delivery.objects.filter(state=Delivery.State.PENDING, next_attempt_at__lte=now)
                .order_by("next_attempt_at").values_list("pk", flat=True)[:limit])
