"""The OpenAI API as a simulated node speaks it: request checks, response objects, stream chunks, errors.

Bad requests get OpenAI's error shape `{"error": {"message", "type", "param", "code"}}` with status 400, the
unknown model included (code `model_not_found`; OpenAI itself answers 404 there, vLLM 404 too, but one status for
every client mistake keeps the gateway's retry rule simple: 4xx is the client's fault, never retried).
"""

from __future__ import annotations

import math
import secrets
import time
from dataclasses import dataclass
from typing import Any

from agents.sim import text

DEFAULT_MAX_TOKENS = 64
MAX_TOKENS_CAP = 4096
ROLES = frozenset({"system", "developer", "user", "assistant", "tool", "function"})


class OpenAIError(Exception):
    def __init__(self, message: str, param: str | None = None, code: str | None = None, status: int = 400,
                 type: str = "invalid_request_error") -> None:
        super().__init__(message)
        self.message, self.param, self.code, self.status, self.type = message, param, code, status, type

    def body(self) -> dict[str, Any]:
        return {"error": {"message": self.message, "type": self.type, "param": self.param, "code": self.code}}


@dataclass
class Completion:
    kind: str  # "chat" or "completion"
    model: str
    messages: list[dict[str, Any]] | None
    prompt: str | None
    max_tokens: int
    temperature: float
    stream: bool
    include_usage: bool
    seed: int | None
    ignore_eos: bool
    prompt_tokens: int

    @property
    def deterministic(self) -> bool:
        return self.temperature == 0 or self.seed is not None


def _int(doc: dict[str, Any], key: str) -> int | None:
    value = doc.get(key)
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int | float) or not float(value).is_integer():
        raise OpenAIError(f"{key} must be an integer, got {value!r}", key)
    return int(value)


def parse(raw: bytes, kind: str, model: str, max_model_len: int) -> Completion:
    """Check a /v1/chat/completions (kind "chat") or /v1/completions ("completion") body for a node serving
    `model`. Raises OpenAIError naming the bad parameter."""
    from agents.spool import loads

    try:
        doc = loads(raw) if raw else None
    except ValueError as exc:
        raise OpenAIError(f"We could not parse the JSON body of your request: {exc}. Send a JSON object.") from None
    if not isinstance(doc, dict):
        raise OpenAIError("The request body must be a JSON object.")
    name = doc.get("model")
    if not isinstance(name, str) or not name:
        raise OpenAIError("you must provide a model parameter (a string)", "model")
    if name != model:
        raise OpenAIError(f"The model `{name[:200]}` does not exist. This node serves `{model}`.", "model",
                          "model_not_found")
    messages: list[dict[str, Any]] | None = None
    prompt: str | None = None
    if kind == "chat":
        messages = doc.get("messages")
        if messages is None:
            raise OpenAIError("Missing required parameter: 'messages'.", "messages", "missing_required_parameter")
        if not isinstance(messages, list) or not messages:
            raise OpenAIError("'messages' must be a non-empty array of message objects.", "messages")
        for i, m in enumerate(messages):
            if not isinstance(m, dict):
                raise OpenAIError(f"messages[{i}] must be an object with 'role' and 'content'.", f"messages[{i}]")
            if m.get("role") not in ROLES:
                raise OpenAIError(f"messages[{i}].role must be one of {', '.join(sorted(ROLES))}, got "
                                  f"{m.get('role')!r}.", f"messages[{i}].role")
            content = m.get("content")
            if not (isinstance(content, str | list) or (content is None and m["role"] == "assistant")):
                raise OpenAIError(f"messages[{i}].content must be a string or an array of content parts.",
                                  f"messages[{i}].content")
        prompt_tokens = text.chat_prompt_tokens(messages)
        max_tokens = _int(doc, "max_completion_tokens")
        if max_tokens is None:
            max_tokens = _int(doc, "max_tokens")
        max_param = "max_completion_tokens" if doc.get("max_completion_tokens") is not None else "max_tokens"
    else:
        raw_prompt = doc.get("prompt")
        if raw_prompt is None:
            raise OpenAIError("Missing required parameter: 'prompt'.", "prompt", "missing_required_parameter")
        prompt_tokens = 0
        if isinstance(raw_prompt, str):
            prompt = raw_prompt
        elif isinstance(raw_prompt, list) and len(raw_prompt) == 1 and isinstance(raw_prompt[0], str):
            prompt = raw_prompt[0]
        elif (isinstance(raw_prompt, list) and raw_prompt
              and all(isinstance(t, int) and not isinstance(t, bool) for t in raw_prompt)):
            prompt = " ".join(str(t) for t in raw_prompt)
            prompt_tokens = len(raw_prompt)  # token ids: one token each
        else:
            raise OpenAIError("'prompt' must be a string, a one-string array or an array of token ids "
                              "(several prompts in one request are not supported).", "prompt")
        prompt_tokens = prompt_tokens or max(1, text.count_tokens(prompt))
        max_tokens = _int(doc, "max_tokens")
        max_param = "max_tokens"
    if max_tokens is None:
        max_tokens = DEFAULT_MAX_TOKENS
    if not 1 <= max_tokens <= MAX_TOKENS_CAP:
        raise OpenAIError(f"{max_param} must be between 1 and {MAX_TOKENS_CAP}, got {max_tokens}.", max_param,
                          "invalid_value")
    if prompt_tokens + max_tokens > max_model_len:
        raise OpenAIError(
            f"This model's maximum context length is {max_model_len} tokens. However, you requested "
            f"{prompt_tokens + max_tokens} tokens ({prompt_tokens} in the "
            f"{'messages' if kind == 'chat' else 'prompt'}, {max_tokens} in the completion). Please reduce the "
            "length of the messages or completion.", "messages" if kind == "chat" else "prompt",
            "context_length_exceeded")
    temperature = doc.get("temperature", 1.0)
    if temperature is None:
        temperature = 1.0
    if (isinstance(temperature, bool) or not isinstance(temperature, int | float) or not math.isfinite(temperature)
            or not 0 <= temperature <= 2):
        raise OpenAIError(f"temperature must be a number between 0 and 2, got {temperature!r}.", "temperature",
                          "invalid_value")
    stream = doc.get("stream", False)
    if stream is None:
        stream = False
    if not isinstance(stream, bool):
        raise OpenAIError(f"stream must be a boolean, got {stream!r}.", "stream")
    n = _int(doc, "n")
    if n is not None and n != 1:
        raise OpenAIError(f"n must be 1 on this server, got {n}.", "n", "invalid_value")
    options = doc.get("stream_options")
    include_usage = False
    if options is not None:
        if not isinstance(options, dict):
            raise OpenAIError("stream_options must be an object.", "stream_options")
        if not stream:
            raise OpenAIError("stream_options is only allowed when stream is true.", "stream_options")
        include_usage = bool(options.get("include_usage", False))
    ignore_eos = doc.get("ignore_eos", False)
    if not isinstance(ignore_eos, bool):
        raise OpenAIError(f"ignore_eos must be a boolean, got {ignore_eos!r}.", "ignore_eos")
    return Completion(kind=kind, model=model, messages=messages, prompt=prompt, max_tokens=max_tokens,
                      temperature=float(temperature), stream=stream, include_usage=include_usage,
                      seed=_int(doc, "seed"), ignore_eos=ignore_eos, prompt_tokens=prompt_tokens)


def new_id(kind: str) -> str:
    return ("chatcmpl-" if kind == "chat" else "cmpl-") + secrets.token_hex(12)


def usage(prompt_tokens: int, completion_tokens: int) -> dict[str, int]:
    return {"prompt_tokens": prompt_tokens, "completion_tokens": completion_tokens,
            "total_tokens": prompt_tokens + completion_tokens}


def response(c: Completion, rid: str, created: int, content: str, finish: str, completion_tokens: int,
             fingerprint: str) -> dict[str, Any]:
    if c.kind == "chat":
        choice: dict[str, Any] = {"index": 0, "message": {"role": "assistant", "content": content},
                                  "logprobs": None, "finish_reason": finish}
        obj = "chat.completion"
    else:
        choice = {"index": 0, "text": content, "logprobs": None, "finish_reason": finish}
        obj = "text_completion"
    return {"id": rid, "object": obj, "created": created, "model": c.model, "system_fingerprint": fingerprint,
            "choices": [choice], "usage": usage(c.prompt_tokens, completion_tokens)}


def chunk(c: Completion, rid: str, created: int, content: str | None, finish: str | None, fingerprint: str,
          first: bool = False) -> dict[str, Any]:
    if c.kind == "chat":
        delta: dict[str, Any] = {}
        if first:
            delta["role"] = "assistant"
        if content is not None:
            delta["content"] = content
        choice: dict[str, Any] = {"index": 0, "delta": delta, "logprobs": None, "finish_reason": finish}
        obj = "chat.completion.chunk"
    else:
        choice = {"index": 0, "text": content or "", "logprobs": None, "finish_reason": finish}
        obj = "text_completion"
    doc: dict[str, Any] = {"id": rid, "object": obj, "created": created, "model": c.model,
                           "system_fingerprint": fingerprint, "choices": [choice]}
    if c.include_usage:
        doc["usage"] = None  # OpenAI sends null on every chunk but the last when usage is asked for
    return doc


def usage_chunk(c: Completion, rid: str, created: int, completion_tokens: int, fingerprint: str) -> dict[str, Any]:
    obj = "chat.completion.chunk" if c.kind == "chat" else "text_completion"
    return {"id": rid, "object": obj, "created": created, "model": c.model, "system_fingerprint": fingerprint,
            "choices": [], "usage": usage(c.prompt_tokens, completion_tokens)}


def now() -> int:
    return int(time.time())
