"""Reading a client's completion request: the body within the size limit, then the fields the gateway itself needs
(everything else passes through to the node untouched). A bad request is a Reply; nothing is routed for it."""

from __future__ import annotations

from typing import Any

import orjson

from control.scheduler.replies import Reply

ROUTES = {"/v1/chat/completions": "chat", "/v1/completions": "completions"}
DEFAULT_MAX_BODY = 8 * 1024 * 1024


def header_map(scope: dict[str, Any]) -> dict[str, str]:
    return {k.decode("latin-1"): v.decode("latin-1") for k, v in scope["headers"]}


async def read_body(headers: dict[str, str], receive: Any, limit: int) -> bytes:
    declared = headers.get("content-length")
    if declared is not None:
        if not declared.isdigit():
            raise Reply(400, "Content-Length is not a number")
        if int(declared) > limit:
            raise Reply(413, f"the request body is {declared} bytes; the gateway's limit is {limit}",
                        code="request_too_large")
    chunks: list[bytes] = []
    size = 0
    while True:
        message = await receive()
        if message["type"] == "http.disconnect":
            raise Reply(499, "client went away")
        chunk = message.get("body", b"")
        size += len(chunk)
        if size > limit:
            raise Reply(413, f"the request body is over the gateway's {limit}-byte limit", code="request_too_large")
        chunks.append(chunk)
        if not message.get("more_body"):
            return b"".join(chunks)


def parse(raw: bytes, kind: str) -> dict[str, Any]:
    """The JSON body of a `kind` ("chat" or "completions") request, checked for what routing relies on."""
    try:
        body = orjson.loads(raw)
    except orjson.JSONDecodeError as exc:
        raise Reply(400, f"the body is not valid JSON: {exc}") from None
    if not isinstance(body, dict):
        raise Reply(400, f"the body must be a JSON object, not {type(body).__name__}")
    model = body.get("model")
    if not isinstance(model, str) or not model.strip() or len(model) > 256:
        raise Reply(400, "'model' is required: the name of a model the fleet serves (GET /v1/models)", param="model")
    if kind == "chat":
        messages = body.get("messages")
        if not isinstance(messages, list) or not messages:
            raise Reply(400, "'messages' is required: a non-empty list of {role, content} objects", param="messages")
    elif not isinstance(body.get("prompt"), str | list) or body.get("prompt") in ("", []):
        raise Reply(400, "'prompt' is required: a string or a list of strings", param="prompt")
    if "stream" in body and not isinstance(body["stream"], bool):
        raise Reply(400, "'stream' must be true or false", param="stream")
    t = body.get("temperature")
    if t is not None and (isinstance(t, bool) or not isinstance(t, int | float)):
        raise Reply(400, "'temperature' must be a number", param="temperature")
    return body


def usage(body: bytes) -> tuple[int | None, int | None]:
    """(prompt_tokens, completion_tokens) from a non-streamed answer, None where it does not say."""
    try:
        found = orjson.loads(body).get("usage") or {}
    except (orjson.JSONDecodeError, AttributeError):
        return None, None
    if not isinstance(found, dict):
        return None, None
    return found.get("prompt_tokens"), found.get("completion_tokens")
