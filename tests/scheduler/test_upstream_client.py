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
