"""A lean keep-alive HTTP/1.1 client for the gateway's hop to the nodes (asyncio streams + httptools' C parser).

Why not httpx here: measured on this project's bench (bench/gateway.py, one trivial upstream), httpx/httpcore's
connection pool cost ~2.8 ms of CPU per proxied request (its pool re-scans and polls every pooled connection for
each request), capping one gateway at ~360 req/s on a shared 2-CPU machine; with this client it holds ~3,000. This client keeps idle connections per
node in a plain list and parses with httptools (already installed with uvicorn[standard]). httpx stays the client for
everything else in Switchyard.

What it does: POST with a body, return once the status line and headers are in, then yield the body as it arrives
(de-chunked, never content-decoded: the bytes a node sends are the bytes the caller gets). A body without
Content-Length or chunked encoding ends when the node closes the connection (valid HTTP/1.1; that connection is not
reused).

A POST is sent to a node at most once per call. A node that read the request and then closed or reset the
connection without a byte may be running it (for an LLM: double cost; for a tool-calling agent: double side effects),
so that failure goes back to the caller (the gateway, which may try another node and says so). The request is
resent on a new connection only when the pooled one was provably dead before the request could reach the node:
the node had closed it while idle (seen before use), or writing the request failed (the connection was already
lost). `Response.resent` says when that happened.
"""

from __future__ import annotations

import asyncio
import ssl
import time
from collections import deque
from collections.abc import AsyncIterator
from urllib.parse import urlsplit

import httptools

READ_SIZE = 65536
# vLLM (uvicorn) closes a keep-alive connection after 5 idle seconds; one idle longer than this is not reused.
IDLE_REUSE_S = 4.0


class UpstreamError(ConnectionError):
    """The node broke the exchange (closed early, sent something that is not HTTP)."""


class _Parsed:
    __slots__ = ("status", "headers", "chunks", "headers_done", "complete", "keep_alive", "parser")

    def __init__(self) -> None:
        self.status = 0
        self.headers: list[tuple[bytes, bytes]] = []
        self.chunks: deque[bytes] = deque()
        self.headers_done = False
        self.complete = False
        self.keep_alive = True
        self.parser: httptools.HttpResponseParser | None = None

    def on_header(self, name: bytes, value: bytes) -> None:
        self.headers.append((name, value))

    def on_headers_complete(self) -> None:
        self.headers_done = True
        # Only meaningful now: once the message is complete the parser has reset for the next one.
        self.keep_alive = self.parser is not None and self.parser.should_keep_alive()

    def on_body(self, body: bytes) -> None:
        self.chunks.append(body)

    def on_message_complete(self) -> None:
        self.complete = True


class _Conn:
    __slots__ = ("reader", "writer", "idle_since")

    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.reader, self.writer, self.idle_since = reader, writer, 0.0

    def close(self) -> None:
        self.writer.close()


# (tls, host, port): a plain connection must never carry a request meant for https on the same host and port.
PoolKey = tuple[bool, str, int]
# Statuses whose response has no body whatever the headers say (RFC 9112 6.3).
_NO_BODY = frozenset({204, 304})


def _ends_at_close(status: int, headers: list[tuple[bytes, bytes]]) -> bool:
    """A response whose body is delimited by the connection closing: neither Content-Length nor chunked."""
    if status < 200 or status in _NO_BODY:
        return False
    return not any(k.lower() in (b"content-length", b"transfer-encoding") for k, _ in headers)


class Response:
    def __init__(self, client: UpstreamClient, key: PoolKey, conn: _Conn, parsed: _Parsed,
                 parser: httptools.HttpResponseParser, read_timeout: float, resent: bool) -> None:
        self._client, self._key, self._conn = client, key, conn
        self._parsed, self._parser, self._read_timeout = parsed, parser, read_timeout
        self.status_code = parsed.status
        self.headers = parsed.headers
        self.resent = resent  # sent again on a new connection because the pooled one was dead before use
        self._until_close = _ends_at_close(parsed.status, parsed.headers)
        self._done = False

    def header(self, name: bytes) -> str:
        for k, v in self.headers:
            if k.lower() == name:
                return v.decode("latin-1")
        return ""

    async def aiter(self) -> AsyncIterator[bytes]:
        parsed = self._parsed
        while True:
            while parsed.chunks:
                yield parsed.chunks.popleft()
            if parsed.complete:
                self._release()
                return
            try:
                data = await asyncio.wait_for(self._conn.reader.read(READ_SIZE), self._read_timeout)
            except TimeoutError:
                await self.aclose()
                raise UpstreamError(f"no byte for {self._read_timeout:g} s") from None
            if not data:
                if self._until_close:  # the close is the end of this body: the answer is whole
                    parsed.complete, parsed.keep_alive = True, False
                    continue
                await self.aclose()
                raise UpstreamError("the node closed the connection mid-answer")
            try:
                self._parser.feed_data(data)
            except httptools.HttpParserError as exc:
                await self.aclose()
                raise UpstreamError(f"bad HTTP from the node: {exc}") from None

    async def read(self, limit: int) -> bytes:
        parts, size = [], 0
        async for chunk in self.aiter():
            size += len(chunk)
            if size > limit:
                await self.aclose()
                raise UpstreamError(f"answer larger than {limit} bytes")
            parts.append(chunk)
        return b"".join(parts)

    def _release(self) -> None:
        if self._done:
            return
        self._done = True
        idle = self._client._idle.setdefault(self._key, [])
        if self._parsed.keep_alive and len(idle) < self._client.max_idle:
            self._conn.idle_since = time.monotonic()
            idle.append(self._conn)
        else:
            self._conn.close()

    async def aclose(self) -> None:
        """Give the connection back when the answer was read to the end, else drop it (it is mid-message)."""
        if self._done:
            return
        if self._parsed.complete and not self._parsed.chunks:
            self._release()
            return
        self._done = True
        self._conn.close()


class UpstreamClient:
    def __init__(self, max_idle_per_node: int = 512) -> None:
        self._idle: dict[PoolKey, list[_Conn]] = {}
        self.max_idle = max_idle_per_node
        self._ssl: ssl.SSLContext | None = None

    def _tls(self) -> ssl.SSLContext:
        if self._ssl is None:  # the system's CA store, hostname checked: an https endpoint is verified
            self._ssl = ssl.create_default_context()
        return self._ssl

    @staticmethod
    def _key(base_url: str) -> tuple[str, int, str, bool]:
        parts = urlsplit(base_url)
        if parts.scheme not in ("http", "https") or not parts.hostname:
            raise UpstreamError(f"unsupported node endpoint {base_url!r}: use http(s)://host:port")
        tls = parts.scheme == "https"
        return parts.hostname, parts.port or (443 if tls else 80), parts.path.rstrip("/"), tls

    async def post(self, base_url: str, path: str, body: bytes, headers: dict[str, str], *,
                   connect_timeout: float, read_timeout: float) -> Response:
        host, port, prefix, tls = self._key(base_url)
        key: PoolKey = (tls, host, port)
        head = [f"POST {prefix}{path} HTTP/1.1\r\nHost: {host}:{port}\r\nContent-Length: {len(body)}\r\n"]
        head += [f"{k}: {v}\r\n" for k, v in headers.items()]
        message = "".join(head).encode("latin-1") + b"\r\n" + body
        resent = False
        while True:
            conn = self._pooled(key) if not resent else None  # a resend always goes on a new connection
            reused = conn is not None
            if conn is None:
                reader, writer = await asyncio.wait_for(
                    asyncio.open_connection(host, port, limit=READ_SIZE * 4, ssl=self._tls() if tls else None),
                    connect_timeout)
                conn = _Conn(reader, writer)
            try:
                conn.writer.write(message)
                await conn.writer.drain()  # back-pressure for a large body; raises if the connection was lost
            except OSError:
                conn.close()
                if reused:  # the write failed: the connection was dead before the node could read the request
                    resent = True
                    continue
                raise
            except BaseException:
                conn.close()
                raise
            return await self._head(conn, key, read_timeout, resent)

    async def _head(self, conn: _Conn, key: PoolKey, read_timeout: float, resent: bool) -> Response:
        """Read the status line and headers. Any failure here is final: the node may have read the request."""
        parsed = _Parsed()
        parser = parsed.parser = httptools.HttpResponseParser(parsed)
        try:
            while not parsed.headers_done:
                data = await conn.reader.read(READ_SIZE)
                if not data:
                    raise UpstreamError("the node closed the connection before answering")
                parser.feed_data(data)
        except httptools.HttpParserError as exc:
            conn.close()
            raise UpstreamError(f"bad HTTP from the node: {exc}") from None
        except BaseException:  # network error, or cancelled (first-byte deadline): the connection is mid-message
            conn.close()
            raise
        parsed.status = parser.get_status_code()
        return Response(self, key, conn, parsed, parser, read_timeout, resent)

    def _pooled(self, key: PoolKey) -> _Conn | None:
        """The most recently used idle connection to `key` that the node has not closed by now."""
        idle = self._idle.get(key)
        now = time.monotonic()
        while idle:
            conn = idle.pop()
            if (now - conn.idle_since < IDLE_REUSE_S and not conn.reader.at_eof()
                    and not conn.writer.is_closing()):
                return conn
            conn.close()
        return None

    async def aclose(self) -> None:
        for conns in self._idle.values():
            for conn in conns:
                conn.close()
        self._idle.clear()
