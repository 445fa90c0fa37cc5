"""uvicorn's HTTP protocol with agent pushes answered straight from the parser's callbacks (`manage.py serve`).

A push (one sample of 289 values) costs the server little besides its HTTP: through ASGI each one builds a scope,
starts a task, passes its body and its reply through receive/send coroutines and message dicts, and checks every
reply header with a regular expression. This protocol recognises the common push as the parser reads its headers
(POST /api/v1/ingest, a Content-Length, a node token in this process's cache, no Expect and nothing pending on the
connection), collects its body in on_body, hands it to the committer thread from on_message_complete, and writes the
reply when the commit answers: no task, no coroutine, no ASGI message. The committer's answers come back to the event
loop in batches (one wake-up for a group's pushes, _Inbox), not one thread-safe call each.

Everything else (a token not cached yet, a missing or bad token, a chunked body, Expect: 100-continue, a pipelined
request behind a pending one, any other URL, websockets) takes uvicorn's ASGI path unchanged (ingest_asgi and
Django). The replies are worded by the same code as the ASGI path's (ingest_asgi.reply_head, ingest.prepare), with
uvicorn's default headers (server, date), so an agent cannot tell the two paths apart: same statuses, bodies and
headers, the 429 and 413 before the body with the connection closed, keep-alive otherwise, 500 on an unexpected
error, and the 200 only after the commit.
"""

from __future__ import annotations

import asyncio
import logging
import threading
from collections.abc import Callable
from typing import Any

from uvicorn.protocols.http.httptools_impl import STATUS_LINE, HttpToolsProtocol
from uvicorn.protocols.utils import get_client_addr

log = logging.getLogger(__name__)
_PATHS = (b"/api/v1/ingest", b"/api/v1/ingest/")  # as dashboard/asgi.py routes it (trailing slash stripped)
_500_BODY = b"Internal Server Error"
direct_replies = 0  # replies written by the direct path in this process (tests, and a look with a debugger)


class _Event:
    """What uvicorn's connection_lost sets on the current cycle; a direct push waits on nothing."""

    def set(self) -> None:
        pass


class DirectPush:
    """One push answered off the ASGI path: what uvicorn's protocol reads of its current cycle (response_complete,
    disconnected, keep_alive, message_event), and the body being read."""

    __slots__ = ("chunks", "disconnected", "keep_alive", "message_event", "pusher", "response_complete", "encoding",
                 "http_version", "path")

    def __init__(self, pusher: Any, encoding: str, keep_alive: bool, http_version: str, path: bytes) -> None:
        self.pusher = pusher
        self.encoding = encoding
        self.keep_alive = keep_alive
        self.http_version = http_version
        self.path = path
        self.chunks: list[bytes] = []
        self.disconnected = False
        self.response_complete = False
        self.message_event = _Event()


class _Inbox:
    """The committer's answers on their way to the event loop: one call_soon_threadsafe (one wake-up of the loop)
    for whatever was answered since the loop last emptied it, typically a whole commit group."""

    def __init__(self, loop: asyncio.AbstractEventLoop) -> None:
        self.loop = loop
        self._items: list[tuple[Callable[[Any], None], Any]] = []
        self._lock = threading.Lock()
        self._scheduled = False

    def put(self, fn: Callable[[Any], None], arg: Any) -> None:
        """Any thread: have the loop call fn(arg)."""
        with self._lock:
            self._items.append((fn, arg))
            if self._scheduled:
                return
            self._scheduled = True
        try:
            self.loop.call_soon_threadsafe(self._drain)
        except RuntimeError:  # the loop is closed (the server is stopping): nobody waits for these answers
            pass

    def _drain(self) -> None:
        with self._lock:
            items, self._items = self._items, []
            self._scheduled = False
        for fn, arg in items:
            try:
                fn(arg)
            except Exception:  # one connection's failure to write must not drop the other answers
                log.exception("ingest: answering a push failed")


_inboxes: dict[int, _Inbox] = {}


def _inbox(loop: asyncio.AbstractEventLoop) -> _Inbox:
    box = _inboxes.get(id(loop))
    if box is None or box.loop is not loop:
        box = _inboxes[id(loop)] = _Inbox(loop)
    return box


class IngestProtocol(HttpToolsProtocol):
    """HttpToolsProtocol with the common agent push answered directly (see the module's docstring)."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        # Imported here, not at the top: uvicorn imports this class before it loads the app, which sets Django up.
        from dashboard.fleet import ingest, ingest_asgi
        from dashboard.fleet.group_commit import committer

        self._service = ingest
        self._asgi = ingest_asgi
        self._committer = committer
        self._direct: DirectPush | None = None  # the message being parsed, when it is a direct push

    def on_message_begin(self) -> None:
        self._direct = None
        super().on_message_begin()

    def on_headers_complete(self) -> None:
        push = self._direct_push()
        if push is None:
            super().on_headers_complete()

    def _direct_push(self) -> DirectPush | None:
        """Start the message as a direct push and return it, or None to leave it to the ASGI path."""
        parser = self.parser
        if parser.get_method() != b"POST" or self.url not in _PATHS or self.expect_100_continue:
            return None
        if parser.should_upgrade() or self.limit_concurrency is not None:
            return None
        if self.cycle is not None and not self.cycle.response_complete:
            return None  # pipelined behind a request still being answered: uvicorn queues it
        length = authorization = None
        encoding = ""
        for name, value in self.headers:
            if name == b"content-length":
                if length is not None:
                    return None
                length = value
            elif name == b"authorization":
                authorization = value
            elif name == b"content-encoding":
                encoding = value.decode("latin-1")
            elif name == b"transfer-encoding":
                return None
        if length is None or not length.isdigit() or authorization is None:
            return None
        scheme, _, token = authorization.decode("latin-1").partition(" ")
        bearer = token.strip() if scheme.lower() == "bearer" else ""
        if not bearer:
            return None
        service = self._service
        pusher = service.from_cache(bearer)
        if pusher is None:
            return None  # not cached: looked up on a thread by the ASGI path, which caches it for the next push
        http_version = parser.get_http_version()
        self.scope["method"] = "POST"  # what uvicorn's shutdown and websocket code may read of the scope
        push = DirectPush(pusher, encoding, http_version != "1.0" and parser.should_keep_alive(), http_version,
                          self.url)
        self._direct = push
        self.cycle = push  # type: ignore[assignment]  # uvicorn's connection_lost and shutdown see it
        if isinstance(pusher, service.Reply):  # over its rate limit: refused before the body
            self._reply(push, pusher, unread_body=length != b"0")
            return push
        limit = service.settings.INGEST_MAX_BYTES
        if int(length) > limit:
            self._reply(push, service.error(
                413, f"the body is {length.decode()} bytes; the limit is {limit}. Send fewer samples per request"),
                unread_body=True)
        return push

    def on_body(self, body: bytes) -> None:
        push = self._direct
        if push is None:
            super().on_body(body)
        elif not push.response_complete:
            push.chunks.append(body)

    def on_message_complete(self) -> None:
        push = self._direct
        if push is None:
            super().on_message_complete()
            return
        if push.response_complete:
            return
        # The 200 comes only after the commit: the committer answers through the inbox, on this loop.
        inbox = _inbox(self.loop)
        self._committer.submit_nowait(self._service.Incoming(
            push.pusher, b"".join(push.chunks), push.encoding,
            lambda result: inbox.put(lambda r: self._committed(push, r), result)))
        push.chunks = []

    def _committed(self, push: DirectPush, result: Any) -> None:
        if push.disconnected or self.transport.is_closing():
            push.response_complete = True
            return
        try:
            reply = self._asgi.committed_reply(result)
        except BaseException as exc:  # noqa: BLE001 - as uvicorn answers an ASGI app's exception
            self.logger.error("Exception in ASGI application\n", exc_info=exc)
            self._write(push, 500, _500_BODY, [(b"content-type", b"text/plain; charset=utf-8"),
                                               (b"content-length", b"21"), (b"connection", b"close")])
            return
        self._reply(push, reply)

    def _reply(self, push: DirectPush, reply: Any, unread_body: bool = False) -> None:
        body, headers = self._asgi.reply_head(reply, unread_body)
        self._write(push, reply.status, body, headers)

    def _write(self, push: DirectPush, status: int, body: bytes, headers: list[tuple[bytes, bytes]]) -> None:
        """The response as uvicorn's RequestResponseCycle.send writes it: status line, default headers, the
        reply's, `connection: close` when the connection ends, the body; then the connection's next request."""
        content = [STATUS_LINE[status]]
        for name, value in self.server_state.default_headers:
            content += [name, b": ", value, b"\r\n"]
        for name, value in headers:
            if name == b"connection" and value == b"close":
                push.keep_alive = False
                continue
            content += [name, b": ", value, b"\r\n"]
        if not push.keep_alive:
            content.append(b"connection: close\r\n")
        content += [b"\r\n", body]
        if self.access_log:
            self.access_logger.info('%s - "%s %s HTTP/%s" %d', get_client_addr(self.scope), "POST",
                                    push.path.decode("latin-1"), push.http_version, status)
        global direct_replies
        direct_replies += 1
        push.response_complete = True
        self.transport.write(b"".join(content))
        if not push.keep_alive:
            self.transport.close()
        self.on_response_complete()
