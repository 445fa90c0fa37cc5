"""One call of a shard through the gateway (settings.GATEWAY_URL), as the job runner: the same scheduler, queues and
shedding as every other client, with the internal token and the job's priority class.

The token is control.scheduler.auth.internal_token(), the one the gateway checks: both sides derive it from
SECRET_KEY with the same function, so a runner and a gateway configured alike always agree."""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Any

import httpx
from django.conf import settings

from control.scheduler.auth import internal_token

log = logging.getLogger(__name__)

CONNECT_TIMEOUT_S = 5.0
READ_TIMEOUT_S = 900.0  # a long generation at batch priority can take minutes; the gateway bounds its own queueing
DEFAULT_RETRY_AFTER_S = 5
MAX_RETRY_AFTER_S = 300


@dataclass
class Outcome:
    kind: str  # ok | busy (429/503 + Retry-After) | transient (no answer, 502/504) | error
    status: int = 0
    node: str = ""
    output: str = ""
    prompt_tokens: int = 0
    completion_tokens: int = 0
    retry_after: int = 0
    error: str = ""


def _retry_after(value: str | None) -> int:
    try:
        seconds = int(float(value)) if value else DEFAULT_RETRY_AFTER_S
    except ValueError:  # an HTTP date: not worth parsing, wait the default
        seconds = DEFAULT_RETRY_AFTER_S
    return max(1, min(seconds, MAX_RETRY_AFTER_S))


def request_body(model: str, messages: list[dict[str, str]], max_tokens: int | None,
                 temperature: float | None) -> dict[str, Any]:
    body: dict[str, Any] = {"model": model, "messages": messages, "stream": False}
    if max_tokens is not None:
        body["max_tokens"] = max_tokens
    if temperature is not None:
        body["temperature"] = temperature
    return body


def complete(body: dict[str, Any], priority: str, job_id: str, shard_index: int, owner_id: int) -> Outcome:
    url = settings.GATEWAY_URL.rstrip("/") + "/v1/chat/completions"
    # On behalf of the job's owner: the gateway keeps the answer cache per user, and only the internal token may
    # name another user.
    headers = {"Authorization": f"Bearer {internal_token()}", "X-Priority": priority,
               "X-Switchyard-Job": f"{job_id}/{shard_index}", "X-Switchyard-On-Behalf-Of": str(owner_id)}
    timeout = httpx.Timeout(READ_TIMEOUT_S, connect=CONNECT_TIMEOUT_S)
    try:
        resp = httpx.post(url, json=body, headers=headers, timeout=timeout)
    except httpx.HTTPError as exc:
        return Outcome("transient", error=f"gateway {settings.GATEWAY_URL} unreachable: {type(exc).__name__}: {exc}")
    node = resp.headers.get("X-Switchyard-Node", "")[:120]
    if resp.status_code in (429, 503):
        return Outcome("busy", status=resp.status_code, node=node,
                       retry_after=_retry_after(resp.headers.get("Retry-After")),
                       error=f"gateway answered {resp.status_code}: no capacity for class {priority}")
    if resp.status_code in (502, 504):
        return Outcome("transient", status=resp.status_code, node=node,
                       error=f"gateway answered {resp.status_code}: {resp.text[:300]}")
    if resp.status_code != 200:
        return Outcome("error", status=resp.status_code, node=node,
                       error=f"gateway answered {resp.status_code}: {resp.text[:500]}")
    try:
        data = resp.json()
        output = data["choices"][0]["message"]["content"] or ""
        usage = data.get("usage") or {}
    except (ValueError, KeyError, IndexError, TypeError) as exc:
        return Outcome("error", status=200, node=node, error=f"gateway answer is not a chat completion: {exc!r}")
    return Outcome("ok", status=200, node=node, output=str(output),
                   prompt_tokens=int(usage.get("prompt_tokens") or 0),
                   completion_tokens=int(usage.get("completion_tokens") or 0))
