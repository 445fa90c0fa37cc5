"""Requests too long for a node's context: skip the nodes whose advertised max_model_len is shorter.

A node's agent advertises what its server runs in the `serving` block of its samples (max_model_len among it), and
the scheduler keeps it with the node's metrics. The gateway estimates what a request needs the way the engines
bound it, prompt + completion:

    prompt tokens ≈ ceil(characters / 4) (+ 4 per chat message for the template), or the count of token ids
    completion    = max_completion_tokens / max_tokens when given, else 1 (the least the engine would accept)

Nodes that do not advertise a length are never skipped (nothing is known against them). The nodes skipped for a
request go into its request-log entry (`filtered`); when every node of the model is too short the request gets
400 `context_length_exceeded` naming the longest context on offer.
"""

from __future__ import annotations

import math
from typing import Any

from control.scheduler.core import Scheduler
from control.scheduler.replies import Reply

MESSAGE_OVERHEAD_TOKENS = 4


def _text(content: Any) -> str:
    if isinstance(content, str):
        return content
    if isinstance(content, list):
        return "".join(p.get("text", "") for p in content if isinstance(p, dict) and isinstance(p.get("text"), str))
    return ""


def answer_tokens(body: dict[str, Any]) -> int:
    """The answer length the request asked for (max_completion_tokens / max_tokens); 0 when it gave none."""
    limit = body.get("max_completion_tokens", body.get("max_tokens"))
    return limit if isinstance(limit, int) and not isinstance(limit, bool) and limit > 0 else 0


def need_tokens(body: dict[str, Any]) -> int:
    """Tokens (prompt + completion) the request needs in a node's context, by the estimate above."""
    if isinstance(body.get("messages"), list):
        prompt = sum(math.ceil(len(_text(m.get("content") if isinstance(m, dict) else None)) / 4)
                     + MESSAGE_OVERHEAD_TOKENS for m in body["messages"])
    else:
        raw = body.get("prompt")
        if isinstance(raw, list) and raw and all(isinstance(t, int) and not isinstance(t, bool) for t in raw):
            prompt = len(raw)
        else:
            text = raw if isinstance(raw, str) else "".join(p for p in raw or [] if isinstance(p, str))
            prompt = math.ceil(len(text) / 4)
    return max(1, prompt) + (answer_tokens(body) or 1)


def too_short(sched: Scheduler, model: str, need: int) -> dict[str, int]:
    """The nodes of `model`'s group whose advertised max_model_len is below `need` (name -> their length)."""
    group = sched.group_for(model)
    if group is None:
        return {}
    return {n.name: n.metrics.max_model_len for n in group.members
            if n.metrics is not None and n.metrics.max_model_len is not None and n.metrics.max_model_len < need}


def exclude_for(sched: Scheduler, model: str, need: int, param: str = "messages") -> tuple[set[str], str]:
    """(nodes to skip, the note for the request log); Reply 400 when no node of the model is long enough."""
    short = too_short(sched, model, need)
    if not short:
        return set(), ""
    group = sched.group_for(model)
    members = group.members if group is not None else []
    if len(short) == len(members):
        longest = max(short.values())
        raise Reply(400, f"the request needs about {need} tokens (prompt + completion) but the longest context any "
                         f"node serving {model!r} runs is max_model_len {longest}; shorten the prompt or max_tokens",
                    code="context_length_exceeded", param=param)
    note = "max_model_len < {}: {}".format(need, ", ".join(f"{k} ({v})" for k, v in sorted(short.items())[:8]))
    return set(short), note
