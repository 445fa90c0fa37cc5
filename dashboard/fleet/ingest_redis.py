"""The ingest push's one Redis round trip (rate limit, power caps, revocation counter) from the event loop.

redis-py's pipeline costs about 130 us of CPU for these five commands (260 us with redis.asyncio), and calling the
synchronous client meant a hop to a thread for every push. This is a minimal RESP2 client bound to one event loop:
one connection per loop, replies matched to requests in order, and every request made during one turn of the loop
written in one send (pushes that arrive together share a round trip). It speaks only what ingest needs: plain
replies, no pub/sub, no cluster. An URL it cannot serve (TLS, a unix socket) gives no client, and ingest then makes
the same round trip with redis-py on a thread (dashboard/fleet/ingest_asgi.py).
"""

from __future__ import annotations

import asyncio
import weakref
from collections import deque
from typing import Any

from django.conf import settings
from redis.connection import parse_url

TIMEOUT_S = 5.0  # as redis_client()'s socket_timeout
CONNECT_TIMEOUT_S = 2.0
round_trips = 0  # requests sent (tests count them beside redis-py's, as Redis sees them)


class RedisReplyError(Exception):
    """Redis answered a command with an error (-ERR ...)."""


def pack(*commands: tuple[Any, ...]) -> bytes:
    out = bytearray()
    for cmd in commands:
        out += b"*%d\r\n" % len(cmd)
        for arg in cmd:
            b = arg if isinstance(arg, bytes) else str(arg).encode()
            out += b"$%d\r\n%s\r\n" % (len(b), b)
    return bytes(out)


def _parse(buf: bytearray, i: int) -> tuple[Any, int] | None:
    """One reply from buf at i: (value, next index), or None while it is incomplete."""
    end = buf.find(b"\r\n", i)
    if end < 0:
        return None
    kind, line = buf[i], bytes(buf[i + 1:end])
    i = end + 2
    if kind == 0x3A:  # ':' integer
        return int(line), i
    if kind == 0x24:  # '$' bulk string
        n = int(line)
        if n < 0:
            return None, i
        if len(buf) < i + n + 2:
            return None
        return bytes(buf[i:i + n]), i + n + 2
    if kind == 0x2B:  # '+' simple string
        return line, i
    if kind == 0x2D:  # '-' error
        return RedisReplyError(line.decode(errors="replace")), i
    if kind == 0x2A:  # '*' array
        n = int(line)
        if n < 0:
            return None, i
        items = []
        for _ in range(n):
            got = _parse(buf, i)
            if got is None:
                return None
            items.append(got[0])
            i = got[1]
        return items, i
    raise ConnectionError(f"unexpected reply from Redis: {bytes(buf[i - len(line) - 3:end])[:40]!r}")


class _Protocol(asyncio.Protocol):
    def __init__(self, client: LoopClient) -> None:
        self.client = client
        self.buf = bytearray()

    def data_received(self, data: bytes) -> None:
        self.buf += data
        buf, i, waiting = self.buf, 0, self.client.waiting
        while waiting:
            fut, count, replies = waiting[0]
            while len(replies) < count:
                got = _parse(buf, i)
                if got is None:
                    del buf[:i]
                    return
                replies.append(got[0])
                i = got[1]
            waiting.popleft()
            if not fut.done():
                fut.set_result(replies)
        del buf[:i]

    def connection_lost(self, exc: Exception | None) -> None:
        self.client.lost(exc)


class LoopClient:
    """One connection to Redis for one event loop."""

    def __init__(self, host: str, port: int, hello: list[tuple[Any, ...]]) -> None:
        self.host, self.port, self.hello = host, port, hello
        self.transport: asyncio.Transport | None = None
        self.connecting: asyncio.Future[None] | None = None
        self.waiting: deque[tuple[asyncio.Future[list[Any]], int, list[Any]]] = deque()
        self.out: list[bytes] = []
        self.flush_scheduled = False

    async def _connect(self) -> None:
        loop = asyncio.get_running_loop()
        transport, _ = await asyncio.wait_for(
            loop.create_connection(lambda: _Protocol(self), self.host, self.port), CONNECT_TIMEOUT_S)
        self.transport = transport  # type: ignore[assignment]
        if self.hello:  # AUTH / SELECT before anything else on this connection
            replies = await self._send(self.hello)
            for r in replies:
                if isinstance(r, Exception):
                    transport.close()
                    raise ConnectionError(f"Redis refused the connection's setup: {r}")

    async def execute(self, commands: list[tuple[Any, ...]]) -> list[Any]:
        """The replies to these commands, sent in one request; an error reply comes back as RedisReplyError."""
        if self.transport is None or self.transport.is_closing():
            if self.connecting is None or self.connecting.done():
                self.connecting = asyncio.ensure_future(self._connect())
            await asyncio.shield(self.connecting)
        return await asyncio.wait_for(self._send(commands), TIMEOUT_S)

    def _send(self, commands: list[tuple[Any, ...]]) -> asyncio.Future[list[Any]]:
        global round_trips
        round_trips += 1
        fut: asyncio.Future[list[Any]] = asyncio.get_running_loop().create_future()
        self.waiting.append((fut, len(commands), []))
        self.out.append(pack(*commands))
        if not self.flush_scheduled:
            self.flush_scheduled = True
            asyncio.get_running_loop().call_soon(self._flush)
        return fut

    def _flush(self) -> None:
        self.flush_scheduled = False
        data, self.out = b"".join(self.out), []
        if self.transport is not None and not self.transport.is_closing():
            self.transport.write(data)
        else:
            self.lost(ConnectionError("the connection to Redis closed"))

    def lost(self, exc: Exception | None) -> None:
        self.transport = None
        while self.waiting:
            fut = self.waiting.popleft()[0]
            if not fut.done():
                fut.set_exception(ConnectionError(f"lost the connection to Redis: {exc}"))

    def close(self) -> None:
        if self.transport is not None:
            self.transport.close()


_clients: weakref.WeakKeyDictionary[asyncio.AbstractEventLoop, LoopClient] = weakref.WeakKeyDictionary()


def client() -> LoopClient | None:
    """This event loop's client, or None when the configured URL is not plain redis:// over TCP."""
    loop = asyncio.get_running_loop()
    c = _clients.get(loop)
    if c is None:
        url = settings.REDIS_URL
        if not url.startswith("redis://"):
            return None
        opts = parse_url(url)
        if "path" in opts:
            return None
        hello: list[tuple[Any, ...]] = []
        if opts.get("password"):
            hello.append(("AUTH", *((opts["username"],) if opts.get("username") else ()), opts["password"]))
        if opts.get("db"):
            hello.append(("SELECT", opts["db"]))
        c = _clients[loop] = LoopClient(opts.get("host", "localhost"), opts.get("port", 6379), hello)
    return c
