"""A small real upstream that plays the gateway for job tests: a raw ASGI app served by uvicorn on a free port.

It checks the internal bearer token, answers OpenAI chat-completion JSON whose content is the prompt upper-cased,
names a node per answer (round robin over three, in X-Switchyard-Node), and shapes failures by markers in the prompt:
`ALWAYS-BUSY` always gets 429 + Retry-After: 1, `BROKEN` gets a 400 (a request the gateway refuses). A Retry-After
that passes is the real gateway's to give (tests/jobs/test_jobs_gateway_e2e.py).
"""

from __future__ import annotations

import itertools
import json
import threading
import time
from dataclasses import dataclass, field
from typing import Any

import uvicorn

NODES = ("sim-a", "sim-b", "sim-c")


@dataclass
class Call:
    content: str
    priority: str
    authorized: bool
    status: int
    node: str


@dataclass
class FakeGateway:
    token: str
    delay_s: float = 0.3  # long enough that the shards of one job overlap
    calls: list[Call] = field(default_factory=list)
    _nodes: Any = field(default_factory=lambda: itertools.cycle(NODES))
    _lock: threading.Lock = field(default_factory=threading.Lock)

    async def __call__(self, scope: dict[str, Any], receive: Any, send: Any) -> None:
        if scope["type"] == "lifespan":
            while True:
                msg = await receive()
                if msg["type"] == "lifespan.startup":
                    await send({"type": "lifespan.startup.complete"})
                elif msg["type"] == "lifespan.shutdown":
                    await send({"type": "lifespan.shutdown.complete"})
                    return
        body = b""
        while True:
            msg = await receive()
            body += msg.get("body", b"")
            if not msg.get("more_body"):
                break
        headers = {k.decode().lower(): v.decode() for k, v in scope["headers"]}
        authorized = headers.get("authorization") == f"Bearer {self.token}"
        request = json.loads(body or b"{}")
        content = (request.get("messages") or [{}])[-1].get("content", "")
        status, extra, answer = self._decide(authorized, scope["path"], content)
        node = ""
        if status == 200:
            import asyncio

            await asyncio.sleep(self.delay_s)
            with self._lock:
                node = next(self._nodes)
            answer = {"id": "chatcmpl-1", "object": "chat.completion", "model": request.get("model"),
                      "choices": [{"index": 0, "finish_reason": "stop",
                                   "message": {"role": "assistant", "content": content.upper()}}],
                      "usage": {"prompt_tokens": len(content) // 4, "completion_tokens": len(content) // 4}}
            extra.append((b"x-switchyard-node", node.encode()))
        with self._lock:
            self.calls.append(Call(content, headers.get("x-priority", ""), authorized, status, node))
        data = json.dumps(answer).encode()
        await send({"type": "http.response.start", "status": status,
                    "headers": [(b"content-type", b"application/json"), *extra]})
        await send({"type": "http.response.body", "body": data})

    def _decide(self, authorized: bool, path: str, content: str) -> tuple[int, list[tuple[bytes, bytes]], Any]:
        if not authorized:
            return 401, [], {"error": {"message": "bad token"}}
        if path != "/v1/chat/completions":
            return 404, [], {"error": {"message": "not found"}}
        busy = [(b"retry-after", b"1")], {"error": {"message": "saturated"}}
        if "ALWAYS-BUSY" in content:
            return 429, *busy
        if "BROKEN" in content:
            return 400, [], {"error": {"message": "model does not exist"}}
        return 200, [], None

    def calls_for(self, marker: str) -> list[Call]:
        with self._lock:
            return [c for c in self.calls if marker in c.content]


class Served:
    """uvicorn serving an app on 127.0.0.1:port in a thread of the test process."""

    def __init__(self, app: Any, port: int) -> None:
        self.server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=port, log_level="warning",
                                                    lifespan="on"))
        self.thread = threading.Thread(target=self.server.run, daemon=True)

    def __enter__(self) -> Served:
        self.thread.start()
        deadline = time.monotonic() + 20
        while not self.server.started:
            if time.monotonic() > deadline:
                raise AssertionError("the fake gateway did not start")
            time.sleep(0.05)
        return self

    def __exit__(self, *exc: Any) -> None:
        self.server.should_exit = True
        self.thread.join(10)
