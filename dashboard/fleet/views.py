"""HTTP views of the fleet app: the agent ingest endpoint and the read-only fleet API."""

from __future__ import annotations

import logging
from typing import Any

from asgiref.sync import sync_to_async
from django.conf import settings
from django.core.exceptions import RequestDataTooBig
from django.db import DatabaseError, close_old_connections, connection
from django.http import HttpRequest, HttpResponse
from django.views.decorators.csrf import csrf_exempt
from django.views.decorators.http import require_POST

import orjson

from dashboard.fleet import ingest as service

log = logging.getLogger(__name__)


def _json(status: int, body: dict[str, Any], headers: dict[str, str] | None = None) -> HttpResponse:
    resp = HttpResponse(orjson.dumps(body), status=status, content_type="application/json")
    for k, v in (headers or {}).items():
        resp[k] = v
    return resp


def _run(token: str | None, raw: bytes, encoding: str) -> service.Reply:
    try:
        return service.handle(token, raw, encoding)
    except DatabaseError as exc:
        # A dropped or restarted database: drop this thread's connection so the next push reconnects, and answer
        # 503 so the agent keeps the samples and retries.
        log.warning("ingest: database error: %s", exc)
        connection.close()
        return service.error(503, "the database is unavailable; the agent will retry", **{"Retry-After": "5"})
    finally:
        close_old_connections()


@csrf_exempt  # agents authenticate with a bearer token, not a browser session
@require_POST
async def ingest(request: HttpRequest) -> HttpResponse:
    limit = settings.INGEST_MAX_BYTES
    try:
        length = int(request.headers.get("Content-Length") or 0)
    except ValueError:
        return _json(400, {"error": "Content-Length is not a number", "fields": {}})
    if length > limit:
        return _json(413, {"error": f"the body is {length} bytes; the limit is {limit}. Send fewer samples per "
                                    "request", "fields": {}})
    try:
        raw = request.body
    except RequestDataTooBig:
        return _json(413, {"error": f"the body is over the {limit}-byte limit", "fields": {}})
    auth = request.headers.get("Authorization", "")
    scheme, _, token = auth.partition(" ")
    token = token.strip() if scheme.lower() == "bearer" else None
    # thread_sensitive=False: each push gets a pool thread with its own DB connection, so pushes wait on the
    # database in parallel instead of queueing behind Django's single sync thread.
    reply = await sync_to_async(_run, thread_sensitive=False)(token, raw, request.headers.get("Content-Encoding", ""))
    headers = dict(reply.headers)
    if reply.status == 401:
        headers["WWW-Authenticate"] = 'Bearer realm="switchyard-ingest"'
    return _json(reply.status, reply.body, headers)
