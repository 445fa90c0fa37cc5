"""A small HTTP/1.1 server on asyncio streams and h11, one per simulated node (and one for the control API).

Why not uvicorn: dozens of nodes share one event loop, and a node must be able to stop listening (connection
refused), hold connections without answering, and listen again on the same port; a listening socket we own does
all three, and an idle node costs nothing but that socket (uvicorn.Server adds a 10 Hz housekeeping task per
server). h11 (already installed with httpx) does the protocol: keep-alive, chunked responses for SSE, limits.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import socket
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass, field
from urllib.parse import parse_qs, urlsplit

import h11

from agents.spool import dumps

log = logging.getLogger(__name__)

MAX_BODY = 4 * 1024 * 1024
READ_CHUNK = 65536


@dataclass
class Request:
    method: str
    path: str
    query: dict[str, list[str]]
    headers: dict[str, str]  # lower-case names
    body: bytes


@dataclass
class Response:
    status: int
    body: bytes = b""
    headers: list[tuple[str, str]] = field(default_factory=list)
    stream: AsyncIterator[bytes] | None = None  # sent chunked when set (and `body` is ignored)
    content_type: str = "application/json"


def json_response(status: int, doc: object, headers: list[tuple[str, str]] | None = None) -> Response:
    return Response(status, dumps(doc), headers or [])


Handler = Callable[[Request], Awaitable[Response]]


def bind(host: str, port: int) -> socket.socket:
    """A bound, not yet listening socket: its port is ours, and a connection to it is refused until listen()."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
        sock.bind((host, port))
    except OSError:
        sock.close()
        raise
    sock.setblocking(False)
    return sock


class HttpServer:
    """Serves `handler` on host:port. start()/stop() may alternate: the port stays the same."""

    def __init__(self, handler: Handler, host: str = "127.0.0.1", port: int = 0, name: str = "") -> None:
        self.handler = handler
        self.host = host
        self.name = name
        self._sock: socket.socket | None = bind(host, port)
        self.port: int = self._sock.getsockname()[1]
        self._server: asyncio.Server | None = None
        self._conns: set[asyncio.Task[None]] = set()
        self.extra_headers: list[tuple[str, str]] = []

    @property
    def listening(self) -> bool:
        return self._server is not None

    async def start(self) -> None:
        if self._server is not None:
            return
        sock = self._sock if self._sock is not None else bind(self.host, self.port)
        self._sock = None
        sock.listen(1024)
        self._server = await asyncio.start_server(self._accept, sock=sock, limit=READ_CHUNK)

    def stop_now(self) -> list[asyncio.Task[None]]:
        """Stop listening (new connections are refused) and cut the open connections; returns their tasks,
        which finish on the loop's next turns."""
        if self._server is not None:
            self._server.close()
            self._server = None
        tasks = list(self._conns)
        for task in tasks:
            task.cancel()
        return tasks

    async def stop(self) -> None:
        for task in self.stop_now():
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await task

    async def close(self) -> None:
        await self.stop()
        if self._sock is not None:
            self._sock.close()
            self._sock = None

    async def _accept(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        task = asyncio.current_task()
        assert task is not None
        self._conns.add(task)
        try:
            await self._serve(reader, writer)
        except (ConnectionError, asyncio.IncompleteReadError, h11.ProtocolError):
            pass
        except asyncio.CancelledError:
            # Cut by stop_now(): a reset, not a graceful close. Not re-raised: asyncio's stream callback (3.11)
            # would log a cancelled connection task as an error.
            writer.transport.abort()
        finally:
            self._conns.discard(task)
            if not writer.transport.is_closing():
                writer.close()

    async def _next_event(self, conn: h11.Connection, reader: asyncio.StreamReader) -> object:
        while True:
            event = conn.next_event()
            if event is h11.NEED_DATA:
                data = await reader.read(READ_CHUNK)
                conn.receive_data(data)
                continue
            return event

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        conn = h11.Connection(h11.SERVER, max_incomplete_event_size=64 * 1024)
        while True:
            event = await self._next_event(conn, reader)
            if isinstance(event, h11.ConnectionClosed) or event is h11.PAUSED:
                return
            if not isinstance(event, h11.Request):
                return
            body = bytearray()
            too_large = False
            while True:
                part = await self._next_event(conn, reader)
                if isinstance(part, h11.Data):
                    if len(body) + len(part.data) > MAX_BODY:
                        too_large = True
                    else:
                        body += part.data
                elif isinstance(part, h11.EndOfMessage):
                    break
                else:
                    return
            target = event.target.decode("latin-1")
            split = urlsplit(target)
            req = Request(
                method=event.method.decode("ascii", "replace").upper(),
                path=split.path,
                query=parse_qs(split.query),
                headers={k.decode("latin-1").lower(): v.decode("latin-1") for k, v in event.headers},
                body=bytes(body),
            )
            if too_large:
                resp = json_response(413, {"error": {"message": f"request body above {MAX_BODY} bytes",
                                                     "type": "invalid_request_error", "param": None, "code": None}})
            else:
                try:
                    resp = await self.handler(req)
                except asyncio.CancelledError:
                    raise
                except Exception:  # noqa: BLE001 - one broken request must not take the server down
                    log.exception("%s: handler failed for %s %s", self.name, req.method, req.path)
                    resp = json_response(500, {"error": {"message": "internal error in the simulator",
                                                         "type": "internal_error", "param": None, "code": None}})
            await self._send(conn, writer, resp, head=req.method == "HEAD")
            if conn.our_state is h11.MUST_CLOSE or conn.their_state is h11.MUST_CLOSE:
                return
            try:
                conn.start_next_cycle()
            except h11.LocalProtocolError:
                return

    async def _send(self, conn: h11.Connection, writer: asyncio.StreamWriter, resp: Response,
                    head: bool = False) -> None:
        headers = [("content-type", resp.content_type), *self.extra_headers, *resp.headers]
        if resp.stream is None or head:
            headers.append(("content-length", str(len(resp.body))))
            writer.write(conn.send(h11.Response(status_code=resp.status, headers=headers)))
            if resp.body and not head:  # a HEAD answer has the GET's headers and no body
                writer.write(conn.send(h11.Data(data=resp.body)))
            writer.write(conn.send(h11.EndOfMessage()))
            await writer.drain()
            return
        # No content-length: h11 sends chunked to an HTTP/1.1 client, close-delimited to an HTTP/1.0 one.
        writer.write(conn.send(h11.Response(status_code=resp.status, headers=headers)))
        await writer.drain()
        stream = resp.stream
        try:
            async for chunk in stream:
                if writer.transport.is_closing():
                    raise ConnectionResetError("client went away")
                writer.write(conn.send(h11.Data(data=chunk)))
                await writer.drain()
        finally:
            # Closed now, not whenever the generator is collected: its cleanup frees the request's engine slot.
            aclose = getattr(stream, "aclose", None)
            if aclose is not None:
                await aclose()
        writer.write(conn.send(h11.EndOfMessage()))
        await writer.drain()
