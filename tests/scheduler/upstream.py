"""A small real OpenAI-speaking node for the gateway tests (raw ASGI under uvicorn, run as its own process).

    python -m tests.scheduler.upstream --port P --name NAME [--delay S] [--tokens N]

Answers /v1/chat/completions and /v1/completions (plain JSON or SSE with `stream: true`), /v1/models, and two test
controls: POST /_control {"delay": s, "fail_status": code|0, "token_gap": s, "role_gap": s} and GET /_stats
(requests counted). With `role_gap` a chat stream opens with a role-only event and the first token follows that
many seconds later, as an engine that announces the answer before prefill ends would.
Its text is a deterministic function of the node name and the request, so a test can compare the bytes the
gateway streamed with the bytes the node sends directly.
"""

from __future__ import annotations

import argparse
import asyncio
import hashlib
import json
from typing import Any


class Upstream:
    def __init__(self, name: str, delay: float, tokens: int) -> None:
        self.name = name
        self.delay = delay
        self.tokens = tokens
        self.token_gap = 0.002
        self.role_gap = 0.0
        self.fail_status = 0
        self.requests = 0
        self.active = 0

    def words(self, body: dict[str, Any]) -> list[str]:
        seed = hashlib.sha256(json.dumps(body, sort_keys=True).encode()).hexdigest()
        n = int(body.get("max_tokens") or self.tokens)
        return [f"{self.name}-{seed[i % 60:i % 60 + 4]}-{i} " for i in range(n)]

    async def __call__(self, scope: dict[str, Any], receive: Any, send: Any) -> None:
        if scope["type"] == "lifespan":
            while True:
                msg = await receive()
                await send({"type": msg["type"] + ".complete"})
                if msg["type"] == "lifespan.shutdown":
                    return
        path, method = scope["path"], scope["method"]
        raw = b""
        while True:
            msg = await receive()
            raw += msg.get("body", b"")
            if not msg.get("more_body"):
                break
        if path == "/_control":
            for k, v in json.loads(raw).items():
                setattr(self, k, v)
            return await self.json(send, 200, {"ok": True})
        if path == "/_stats":
            return await self.json(send, 200, {"requests": self.requests, "active": self.active})
        if path == "/v1/models":
            return await self.json(send, 200, {"object": "list", "data": [{"id": "test-model", "object": "model"}]})
        if method != "POST" or path not in ("/v1/chat/completions", "/v1/completions"):
            return await self.json(send, 404, {"error": "no route"})
        self.requests += 1
        self.active += 1
        try:
            body = json.loads(raw)
            await asyncio.sleep(self.delay)
            if self.fail_status:
                return await self.json(send, self.fail_status, {"error": {"message": "failing on purpose"}})
            words = self.words(body)
            chat = path == "/v1/chat/completions"
            if not body.get("stream"):
                choice = ({"index": 0, "message": {"role": "assistant", "content": "".join(words)},
                           "finish_reason": "length"} if chat else
                          {"index": 0, "text": "".join(words), "finish_reason": "length"})
                return await self.json(send, 200, {
                    "id": f"cmpl-{self.name}", "object": "chat.completion" if chat else "text_completion",
                    "model": body.get("model"), "choices": [choice],
                    "usage": {"prompt_tokens": 7, "completion_tokens": len(words), "total_tokens": 7 + len(words)}})
            await send({"type": "http.response.start", "status": 200,
                        "headers": [(b"content-type", b"text/event-stream"), (b"x-sim-node", self.name.encode())]})
            if chat and self.role_gap:
                role = {"id": f"cmpl-{self.name}", "object": "chat.completion.chunk",
                        "choices": [{"index": 0, "delta": {"role": "assistant", "content": ""}}]}
                await send({"type": "http.response.body", "body": f"data: {json.dumps(role)}\n\n".encode(),
                            "more_body": True})
                await asyncio.sleep(self.role_gap)
            for i, w in enumerate(words):
                delta = {"index": 0, "delta": {"content": w}} if chat else {"index": 0, "text": w}
                event = {"id": f"cmpl-{self.name}", "object": "chat.completion.chunk", "choices": [delta]}
                await send({"type": "http.response.body", "body": f"data: {json.dumps(event)}\n\n".encode(),
                            "more_body": True})
                if i % 4 == 3:
                    await asyncio.sleep(self.token_gap)
            await send({"type": "http.response.body", "body": b"data: [DONE]\n\n"})
        finally:
            self.active -= 1

    async def json(self, send: Any, status: int, doc: Any) -> None:
        body = json.dumps(doc).encode()
        await send({"type": "http.response.start", "status": status,
                    "headers": [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode()),
                                (b"x-sim-node", self.name.encode())]})
        await send({"type": "http.response.body", "body": body})


def main() -> None:
    import uvicorn

    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--name", required=True)
    parser.add_argument("--delay", type=float, default=0.0, help="seconds before the answer starts")
    parser.add_argument("--tokens", type=int, default=8, help="tokens per answer")
    args = parser.parse_args()
    uvicorn.run(Upstream(args.name, args.delay, args.tokens), host="127.0.0.1", port=args.port, log_level="error",
                lifespan="on", timeout_keep_alive=75)


if __name__ == "__main__":
    main()
