"""Answers the gateway writes itself (not a node's): OpenAI's error shape, and the one ASGI helper that sends a
whole response with the headers every gateway answer carries."""

from __future__ import annotations

from typing import Any

import orjson


class Reply(Exception):
    """An answer decided by the gateway itself (OpenAI's error shape)."""

    def __init__(self, status: int, message: str, *, type_: str = "invalid_request_error", code: str | None = None,
                 param: str | None = None, headers: dict[str, str] | None = None) -> None:
        super().__init__(message)
        self.status, self.message, self.type, self.code, self.param = status, message, type_, code, param
        self.headers = headers or {}

    def body(self) -> bytes:
        return orjson.dumps({"error": {"message": self.message, "type": self.type, "param": self.param,
                                       "code": self.code}})


async def send_whole(send: Any, status: int, body: bytes, content_type: str | bytes = "application/json",
                     extra: list[tuple[bytes, bytes]] | None = None, node: str = "") -> None:
    """One complete response; `X-Switchyard-Node` names the node that answered ('' when none did)."""
    ct = content_type.encode() if isinstance(content_type, str) else content_type
    headers = [(b"content-type", ct), (b"content-length", str(len(body)).encode()),
               (b"x-switchyard-node", node.encode())]
    if extra:
        headers += extra
    await send({"type": "http.response.start", "status": status, "headers": headers})
    await send({"type": "http.response.body", "body": body})


async def send_error(send: Any, reply: Reply, extra: list[tuple[bytes, bytes]] | None = None) -> None:
    headers = [(k.lower().encode(), str(v).encode()) for k, v in reply.headers.items()] + (extra or [])
    if reply.status == 401:
        headers.append((b"www-authenticate", b'Bearer realm="switchyard-gateway"'))
    await send_whole(send, reply.status, reply.body(), extra=headers)
