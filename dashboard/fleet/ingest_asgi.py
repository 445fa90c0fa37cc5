"""POST /api/v1/ingest as a bare ASGI app, routed in front of Django (see dashboard/asgi.py).

The ingest path is the hottest in the system (a 2,000-node fleet pushes 400 times a second). Through Django's
request cycle each push would hop into Django's single sync thread once per middleware (sessions, CSRF, auth,
messages, WhiteNoise), serialising every push behind the others. Agents need none of that: they authenticate with
a node token. So this app checks the token (and the node's rate limit) from the headers alone, then reads the body,
hands it to the process's committer thread (dashboard/fleet/group_commit.py), which checks and stores it with its
group, and writes the reply.

A push whose token is in the process's cache costs no thread hop before its body: the token is checked on the event
loop, and its Redis round trip (rate limit, power caps, revocation counter) is made by the committer once for the
push's whole group, before the group is stored (ingest.admit). The loop refuses a node over its rate limit before
reading the body from the last count Redis gave. Only a token not cached is looked up on a thread (the database,
and its own Redis round trip).

Under `manage.py serve` the common push (a cached token, a Content-Length) does not reach this app: the ingest
protocol (ingest_protocol.py) answers it from uvicorn's HTTP parser callbacks, with this module's wording of the
reply (reply_head, committed_reply). This app answers the rest, and every push under another ASGI server.
"""

from __future__ import annotations

import asyncio
import logging
import random
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import orjson
from django.conf import settings
from django.db import DatabaseError, connection

from dashboard.fleet import ingest as service
from dashboard.fleet.group_commit import committer

log = logging.getLogger(__name__)
PATH = "/api/v1/ingest"
_executor = ThreadPoolExecutor(max_workers=8, thread_name_prefix="ingest")


def run_service(step: Callable[..., Any], *args: Any) -> Any:
    """One step of the ingest service (authenticate, or handle the body) on this thread's database connection."""
    try:
        return step(*args)
    except DatabaseError as exc:
        # A dropped or restarted database: forget this thread's connection so the next push reconnects, and
        # answer 503 so the agent keeps the samples and retries.
        log.warning("ingest: database error: %s", exc)
        connection.close()
        return service.error(503, "the database is unavailable; the agent will retry", **{"Retry-After": "5"})
    except Exception:
        connection.close()  # leave no half-done transaction on this thread's connection
        raise


def reply_head(reply: service.Reply, unread_body: bool = False) -> tuple[bytes, list[tuple[bytes, bytes]]]:
    """The encoded body and the headers of a reply: the one place that words them, for the ASGI path (_send) and
    the ingest protocol's direct path (ingest_protocol), so that both answer alike."""
    body = orjson.dumps(reply.body)
    headers = [(b"content-type", b"application/json"), (b"content-length", b"%d" % len(body)),
               # Django's middleware does not run on this path; the id lets an agent's log line meet the server's.
               # From the random module rather than os.urandom: no system call, and no release of the GIL (to the
               # committer thread, mid-reply) for every push; an id to find a log line by, not a secret.
               (b"x-request-id", b"%032x" % random.getrandbits(128))]
    headers += [(k.lower().encode(), v.encode()) for k, v in reply.headers.items()]
    if reply.status == 401:
        headers.append((b"www-authenticate", b'Bearer realm="switchyard-ingest"'))
    if unread_body:
        # Answered before the body was read: close rather than make the server read and discard what the client
        # may still send on this connection.
        headers.append((b"connection", b"close"))
    return body, headers


async def _send(send: Any, reply: service.Reply, unread_body: bool = False) -> None:
    body, headers = reply_head(reply, unread_body)
    await send({"type": "http.response.start", "status": reply.status, "headers": headers})
    await send({"type": "http.response.body", "body": body})


async def app(scope: dict[str, Any], receive: Any, send: Any) -> None:
    if scope["method"] != "POST":
        reply = service.error(405, f"{scope['method']} is not allowed here; agents POST samples", Allow="POST")
        return await _send(send, reply)
    headers = {k.decode("latin-1").lower(): v.decode("latin-1") for k, v in scope["headers"]}
    has_body = headers.get("content-length", "0") != "0" or "transfer-encoding" in headers
    scheme, _, token = headers.get("authorization", "").partition(" ")
    bearer = token.strip() if scheme.lower() == "bearer" else None
    # Authenticate on the headers alone, before reading a byte of the body: an unknown client holds no memory
    # and no ingest thread, whatever body it announces or however slowly it sends it.
    if not bearer:
        pusher: service.Pusher | service.Reply = service.authenticate(bearer)  # no I/O without a token
    else:
        pusher = await authenticate(bearer)
    if isinstance(pusher, service.Reply):
        return await _send(send, pusher, unread_body=has_body)
    limit = settings.INGEST_MAX_BYTES
    declared = headers.get("content-length", "0")
    if not declared.isdigit():
        return await _send(send, service.error(400, "Content-Length is not a number"), unread_body=has_body)
    if int(declared) > limit:
        return await _send(send, service.error(
            413, f"the body is {declared} bytes; the limit is {limit}. Send fewer samples per request"),
            unread_body=True)
    chunks: list[bytes] = []
    size = 0
    while True:
        message = await receive()
        if message["type"] == "http.disconnect":
            return None
        chunk = message.get("body", b"")
        size += len(chunk)
        if size > limit:  # chunked uploads carry no Content-Length: count as we read
            return await _send(send, service.error(413, f"the body is over the {limit}-byte limit"),
                               unread_body=True)
        chunks.append(chunk)
        if not message.get("more_body"):
            break
    reply = await commit(pusher, b"".join(chunks), headers.get("content-encoding", ""))
    await _send(send, reply)


async def authenticate(token: str) -> service.Pusher | service.Reply:
    """service.authenticate without a thread for a cached token: its Redis round trip is made by its commit group."""
    pusher = service.from_cache(token)
    if pusher is not None:
        return pusher
    return await asyncio.get_running_loop().run_in_executor(_executor, run_service, service.authenticate, token)


def _settle(fut: asyncio.Future[Any], result: Any) -> None:
    if not fut.done():
        fut.set_result(result)


async def commit(pusher: service.Pusher, raw: bytes, encoding: str) -> service.Reply:
    """Hand the body to the committer thread and wait for its answer: the 200 comes only after the commit."""
    loop = asyncio.get_running_loop()
    fut: asyncio.Future[service.Reply | BaseException] = loop.create_future()

    def resolve(result: service.Reply | BaseException) -> None:
        try:
            loop.call_soon_threadsafe(_settle, fut, result)
        except RuntimeError:  # the loop is gone (the server is stopping): nobody waits for this answer
            pass

    committer.submit_nowait(service.Incoming(pusher, raw, encoding, resolve))
    return committed_reply(await fut)


def committed_reply(result: service.Reply | BaseException) -> service.Reply:
    """What the committer answered, as the reply to send; an unexpected exception is raised (a 500)."""
    if isinstance(result, DatabaseError):
        # As run_service answers it: the committer has dropped its connection and reconnects for the next group.
        log.warning("ingest: database error: %s", result)
        return service.error(503, "the database is unavailable; the agent will retry", **{"Retry-After": "5"})
    if isinstance(result, BaseException):
        raise result
    return result
