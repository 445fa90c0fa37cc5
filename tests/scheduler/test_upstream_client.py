"""The gateway's HTTP/1.1 client against raw local TCP servers (keep-alive, chunked bodies, broken peers)."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable

import pytest

from control.scheduler.upstream import UpstreamClient, UpstreamError

Handler = Callable[[asyncio.StreamReader, asyncio.StreamWriter], Awaitable[None]]


async def read_request(reader: asyncio.StreamReader) -> bytes:
    head = await reader.readuntil(b"\r\n\r\n")
    length = next(int(line.split(b":")[1]) for line in head.split(b"\r\n") if line.lower().startswith(b"content-length"))
    return head + await reader.readexactly(length)


async def serve(handler: Handler) -> tuple[asyncio.Server, str]:
    server = await asyncio.start_server(handler, "127.0.0.1", 0)
    return server, f"http://127.0.0.1:{server.sockets[0].getsockname()[1]}"


def test_keep_alive_reuse_and_resend_after_an_idle_close() -> None:
    connections = []

    async def handler(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        connections.append(writer)
        await read_request(reader)
        writer.write(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok")
        await writer.drain()
        if len(connections) == 1:  # serve a second request on the first connection, then close it while idle
            await read_request(reader)
            writer.write(b"HTTP/1.1 200 OK\r\nContent-Length: 3\r\n\r\nok2")
            await writer.drain()
        writer.close()

    async def go() -> list[bytes]:
        server, url = await serve(handler)
        client = UpstreamClient()
        out = []
        for _ in range(3):
            resp = await client.post(url, "/v1/x", b"{}", {}, connect_timeout=2, read_timeout=2)
            out.append(await resp.read(1000))
            await asyncio.sleep(0.05)
        await client.aclose()
        server.close()
        return out

    assert asyncio.run(go()) == [b"ok", b"ok2", b"ok"]  # the third went out on a new connection, transparently
    assert len(connections) == 2


def test_chunked_bodies_arrive_dechunked_as_they_come() -> None:
    async def handler(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await read_request(reader)
        writer.write(b"HTTP/1.1 200 OK\r\nContent-Type: text/event-stream\r\nTransfer-Encoding: chunked\r\n\r\n")
        for part in (b"data: 1\n\n", b"data: 2\n\n"):
            writer.write(b"%x\r\n%s\r\n" % (len(part), part))
            await writer.drain()
            await asyncio.sleep(0.02)
        writer.write(b"0\r\n\r\n")
        await writer.drain()

    async def go() -> tuple[str, list[bytes]]:
        server, url = await serve(handler)
        client = UpstreamClient()
        resp = await client.post(url, "/v1/x", b"{}", {}, connect_timeout=2, read_timeout=2)
        chunks = [c async for c in resp.aiter()]
        server.close()
        return resp.header(b"content-type"), chunks

    ctype, chunks = asyncio.run(go())
    assert ctype == "text/event-stream" and b"".join(chunks) == b"data: 1\n\ndata: 2\n\n"


@pytest.mark.parametrize("reply, message", [
    (b"", "closed the connection before answering"),
    (b"SMTP ready\r\n\r\n", "bad HTTP from the node"),
    (b"HTTP/1.1 200 OK\r\nContent-Length: 10\r\n\r\nabc", "closed the connection mid-answer"),
])
def test_broken_peers_raise_upstream_errors(reply: bytes, message: str) -> None:
    async def handler(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await read_request(reader)
        writer.write(reply)
        await writer.drain()
        writer.close()

    async def go() -> None:
        server, url = await serve(handler)
        try:
            resp = await UpstreamClient().post(url, "/v1/x", b"{}", {}, connect_timeout=2, read_timeout=2)
            await resp.read(1000)
        finally:
            server.close()

    with pytest.raises(UpstreamError, match=message):
        asyncio.run(go())


def test_endpoint_schemes() -> None:
    async def go() -> None:
        await UpstreamClient().post("ftp://x", "/v1/x", b"", {}, connect_timeout=1, read_timeout=1)

    with pytest.raises(UpstreamError, match="use http"):
        asyncio.run(go())


def test_a_request_the_node_read_and_then_dropped_is_never_resent() -> None:
    """The node answers once, keeps the connection, then reads the next request and closes without a byte: that
    request may already be running there, so the client must report the failure, not send it again."""
    seen: list[bytes] = []

    async def handler(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        while True:
            try:
                request = await read_request(reader)
            except asyncio.IncompleteReadError:
                break
            seen.append(request)
            if len(seen) > 1:
                break  # read it, count it, close without answering
            writer.write(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok")
            await writer.drain()
        writer.close()

    async def go() -> str:
        server, url = await serve(handler)
        client = UpstreamClient()
        try:
            first = await client.post(url, "/v1/x", b'{"n": 1}', {}, connect_timeout=2, read_timeout=2)
            assert await first.read(1000) == b"ok"
            try:
                await client.post(url, "/v1/x", b'{"n": 2}', {}, connect_timeout=2, read_timeout=2)
            except UpstreamError as exc:
                return str(exc)
            return "answered"
        finally:
            await client.aclose()
            server.close()

    assert asyncio.run(go()) == "the node closed the connection before answering"
    assert [r.endswith(b'{"n": 2}') for r in seen] == [False, True]  # the second request reached the node once


def test_a_pooled_connection_closed_before_use_is_not_used() -> None:
    """A connection that is provably dead before the request is written (closed on our side here, as a reset
    would) is dropped, and the request goes out once on a new connection."""
    seen: list[bytes] = []

    async def handler(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        while True:
            try:
                seen.append(await read_request(reader))
            except (asyncio.IncompleteReadError, ConnectionError):
                break
            writer.write(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok")
            await writer.drain()
        writer.close()

    async def go() -> bytes:
        server, url = await serve(handler)
        client = UpstreamClient()
        try:
            await (await client.post(url, "/v1/x", b"{}", {}, connect_timeout=2, read_timeout=2)).read(100)
            for conns in client._idle.values():
                for conn in conns:
                    conn.writer.transport.abort()
            return await (await client.post(url, "/v1/x", b"{}", {}, connect_timeout=2, read_timeout=2)).read(100)
        finally:
            await client.aclose()
            server.close()

    assert asyncio.run(go()) == b"ok"
    assert len(seen) == 2


def test_a_body_that_ends_when_the_node_closes_is_a_whole_answer() -> None:
    """HTTP/1.1 allows a response with neither Content-Length nor chunked encoding: its body ends at the close."""

    async def handler(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await read_request(reader)
        writer.write(b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\n\r\n")
        for part in (b'{"answer": ', b'"to the end"}'):
            writer.write(part)
            await writer.drain()
            await asyncio.sleep(0.02)
        writer.close()

    async def go() -> tuple[bytes, int]:
        server, url = await serve(handler)
        client = UpstreamClient()
        try:
            resp = await client.post(url, "/v1/x", b"{}", {}, connect_timeout=2, read_timeout=2)
            body = await resp.read(1000)
            return body, sum(len(c) for c in client._idle.values())
        finally:
            await client.aclose()
            server.close()

    body, pooled = asyncio.run(go())
    assert body == b'{"answer": "to the end"}'
    assert pooled == 0  # that connection is over: never reused


def test_an_https_endpoint_never_reuses_a_plain_connection_to_the_same_port() -> None:
    """The pool is keyed by scheme, host and port: a plain-text connection must not carry an https request."""
    seen: list[bytes] = []

    async def handler(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        while True:
            try:
                seen.append(await read_request(reader))
            except (asyncio.IncompleteReadError, ConnectionError, StopIteration, ValueError):
                break
            writer.write(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok")
            await writer.drain()
        writer.close()

    async def go() -> str:
        server, url = await serve(handler)
        client = UpstreamClient()
        try:
            await (await client.post(url, "/v1/x", b"{}", {}, connect_timeout=2, read_timeout=2)).read(100)
            try:
                resp = await client.post(url.replace("http://", "https://"), "/v1/x", b"{}", {}, connect_timeout=2,
                                         read_timeout=2)
                return f"answered in plain text: {await resp.read(100)!r}"
            except (OSError, UpstreamError) as exc:  # the TLS handshake with a plain-text server fails
                return type(exc).__name__
        finally:
            await client.aclose()
            server.close()

    outcome = asyncio.run(go())
    assert not outcome.startswith("answered"), outcome
    assert len(seen) == 1  # the https request never went out over the plain connection
