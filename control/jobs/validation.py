"""Checks of a job submission; every problem is reported with its field path and nothing is stored."""

from __future__ import annotations

import math
import re
from dataclasses import dataclass
from typing import Any

from control.jobs import sharding
from control.policy import service as policy_service
from control.scheduler.config import Priorities
from control.scheduler.priority import user_ceiling
from control.webhooks.addresses import InvalidURL, check_url
from core.api import ApiError

MAX_INPUT_CHARS = 1_000_000
MAX_MESSAGES = 256
MAX_TOKENS_RANGE = (1, 32_768)
TEMPERATURE_RANGE = (0.0, 2.0)
TOKEN_BUDGET_RANGE = (64, 32_768)
MAX_SHARDS = 256
MODEL_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._:/@+-]{0,199}$")
ROLES = ("system", "user", "assistant")
FIELDS = {"model", "input", "messages", "max_tokens", "temperature", "priority", "callback_url", "shard", "reason"}


@dataclass
class JobSpec:
    model: str
    input: str
    messages: list[dict[str, str]] | None
    max_tokens: int | None
    temperature: float | None
    priority: str
    callback_url: str
    token_budget: int | None
    chunks: list[str]
    reason: str


def priority_classes() -> list[str]:
    return [c["name"] for c in policy_service.active("priorities").document["classes"]]


def above_ceiling(priority: str, admin: bool, token_class: str | None) -> str | None:
    """The most important class this submitter may give a job, when `priority` ranks above it; None when allowed
    (control.scheduler.priority.user_ceiling says who may ask for what)."""
    priorities = Priorities.from_document(policy_service.active("priorities").document)
    allowed = user_ceiling(priorities, token_class, admin)
    return allowed if priority in priorities.classes and priorities.ranks_above(priority, allowed) else None


def _int_in(value: Any, field: str, lo: int, hi: int, fields: dict[str, str]) -> int | None:
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int):
        fields[field] = f"expected an integer from {lo} to {hi}, got {type(value).__name__}"
        return None
    if not lo <= value <= hi:
        fields[field] = f"{value} is outside {lo}..{hi}"
        return None
    return value


def _messages(value: Any, fields: dict[str, str]) -> list[dict[str, str]] | None:
    if not isinstance(value, list) or not value:
        fields["messages"] = "expected a non-empty list of {role, content} objects"
        return None
    if len(value) > MAX_MESSAGES:
        fields["messages"] = f"at most {MAX_MESSAGES} messages"
        return None
    out, total = [], 0
    for i, m in enumerate(value):
        path = f"messages[{i}]"
        if not isinstance(m, dict):
            fields[path] = "expected an object with role and content"
            continue
        extra = sorted(set(m) - {"role", "content"})
        if extra:
            fields[f"{path}.{extra[0]}"] = "unknown field"
        if m.get("role") not in ROLES:
            fields[f"{path}.role"] = f"one of {', '.join(ROLES)}"
        content = m.get("content")
        if not isinstance(content, str):
            fields[f"{path}.content"] = "expected a string"
            continue
        if "\x00" in content:
            fields[f"{path}.content"] = "NUL characters are not allowed"
        total += len(content)
        out.append({"role": str(m.get("role")), "content": content})
    if total > MAX_INPUT_CHARS:
        fields["messages"] = f"{total} characters of content; the limit is {MAX_INPUT_CHARS}"
    return out


def check(data: dict[str, Any]) -> JobSpec:
    fields: dict[str, str] = {}
    for k in sorted(set(data) - FIELDS):
        fields[k] = "unknown field"

    model = data.get("model")
    if not isinstance(model, str) or not model.strip():
        fields["model"] = "This field is required (the model name, e.g. deepseek-r1)."
    elif not MODEL_NAME.match(model):
        fields["model"] = "at most 200 characters of letters, digits and . _ : / @ + -"

    raw_input, messages = data.get("input"), data.get("messages")
    text = ""
    if raw_input is None and messages is None:
        fields["input"] = "send input (a string) or messages (a list)"
    elif raw_input is not None and messages is not None:
        fields["input"] = "send input or messages, not both"
    elif raw_input is not None:
        if not isinstance(raw_input, str) or not raw_input.strip():
            fields["input"] = "expected a non-empty string"
        elif len(raw_input) > MAX_INPUT_CHARS:
            fields["input"] = f"{len(raw_input)} characters; the limit is {MAX_INPUT_CHARS}"
        elif "\x00" in raw_input:
            fields["input"] = "NUL characters are not allowed"
        else:
            text = raw_input
    checked_messages = _messages(messages, fields) if messages is not None else None

    max_tokens = _int_in(data.get("max_tokens"), "max_tokens", *MAX_TOKENS_RANGE, fields)
    temperature = data.get("temperature")
    if temperature is not None:
        if isinstance(temperature, bool) or not isinstance(temperature, int | float) or not math.isfinite(temperature):
            fields["temperature"] = "expected a number"
            temperature = None
        elif not TEMPERATURE_RANGE[0] <= temperature <= TEMPERATURE_RANGE[1]:
            fields["temperature"] = f"{temperature} is outside {TEMPERATURE_RANGE[0]}..{TEMPERATURE_RANGE[1]}"
            temperature = None

    classes = priority_classes()
    priority = data.get("priority", "batch")
    if not isinstance(priority, str) or priority not in classes:
        fields["priority"] = f"one of the active priorities policy's classes: {', '.join(classes)}"

    callback = data.get("callback_url") or ""
    if callback:
        # The URL's form is checked here; its address (private, loopback ...) when the webhook sender connects,
        # since DNS may answer differently by then.
        try:
            callback = check_url(callback)
        except InvalidURL as exc:
            fields["callback_url"] = str(exc)

    token_budget = None
    shard = data.get("shard")
    if shard is not None:
        if not isinstance(shard, dict):
            fields["shard"] = "expected an object {token_budget: int}"
        else:
            for k in sorted(set(shard) - {"token_budget"}):
                fields[f"shard.{k}"] = "unknown field"
            if "token_budget" not in shard:
                fields["shard.token_budget"] = "This field is required."
            token_budget = _int_in(shard.get("token_budget"), "shard.token_budget", *TOKEN_BUDGET_RANGE, fields)
            if messages is not None:
                fields["shard"] = "only an `input` string can be sharded, not messages"

    reason = data.get("reason")
    if reason is not None and (not isinstance(reason, str) or len(reason) > 2000):
        fields["reason"] = "a string of at most 2000 characters"

    chunks = [text] if text else []
    if not fields and token_budget is not None:
        chunks = sharding.split(text, token_budget)
        if len(chunks) > MAX_SHARDS:
            fields["shard.token_budget"] = (f"the input makes {len(chunks)} shards at this budget; the limit is "
                                            f"{MAX_SHARDS}: raise token_budget")
    if fields:
        name, why = next(iter(sorted(fields.items())))
        more = f" (and {len(fields) - 1} more)" if len(fields) > 1 else ""
        raise ApiError(400, f"{name}: {why}{more}", fields)
    return JobSpec(model=str(model).strip(), input=text, messages=checked_messages, max_tokens=max_tokens,
                   temperature=float(temperature) if temperature is not None else None, priority=str(priority),
                   callback_url=callback, token_budget=token_budget, chunks=chunks if text else [""],
                   reason=(reason or "").strip())
