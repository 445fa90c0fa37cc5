"""What a simulated model says: token counts of a prompt, the length of an answer and its words.

Prompt tokens are estimated as ceil(characters / 4) (OpenAI's rule of thumb for English), plus 4 per chat message
for the role and separators; there is no tokenizer. Every generated token is one word of a small vocabulary.

Answers are deterministic when the request's temperature is 0 or when it carries a `seed`: the random generator
is seeded by a hash of the model, the prompt (or messages), max_tokens and the seed, so the same request always
gets the same text, streamed or not. Otherwise every answer is drawn afresh.
"""

from __future__ import annotations

import hashlib
import json
import math
import random
from typing import Any

VOCABULARY: tuple[str, ...] = (
    "the", "switch", "yard", "routes", "every", "request", "to", "a", "node", "with", "free", "capacity",
    "and", "tokens", "flow", "through", "GPU", "memory", "while", "queue", "waits", "for", "batch", "slots",
    "model", "answers", "quickly", "under", "load", "power", "limit", "keeps", "cards", "cool", "scheduler",
    "weights", "latency", "throughput", "cache", "prefill", "decode", "stream", "of", "words", "in", "order",
    "fleet", "grows", "at", "peak", "shrinks", "night", "operators", "watch", "heatmaps", "alerts", "fire",
    "when", "limits", "break", "is", "calm", "again",
)
MESSAGE_OVERHEAD_TOKENS = 4
# Natural answer lengths (when max_tokens does not cut them first): 8 plus an exponential with this mean.
MEAN_ANSWER_TOKENS = 200.0


def count_tokens(text: str) -> int:
    return math.ceil(len(text) / 4)


def message_text(content: Any) -> str:
    """The text of a chat message's content: a string, or a list of parts of which the text parts count."""
    if isinstance(content, str):
        return content
    if isinstance(content, list):
        return "".join(p.get("text", "") for p in content if isinstance(p, dict) and isinstance(p.get("text"), str))
    return ""


def chat_prompt_tokens(messages: list[dict[str, Any]]) -> int:
    return max(1, sum(count_tokens(message_text(m.get("content"))) + MESSAGE_OVERHEAD_TOKENS for m in messages))


def prompt_text(messages: list[dict[str, Any]] | None, prompt: str | None) -> str:
    """All prompt text in one string (what the prefix cache keys on)."""
    if messages is not None:
        return "\n".join(f"{m.get('role', '')}: {message_text(m.get('content'))}" for m in messages)
    return prompt or ""


def rng_for(model: str, prompt: Any, max_tokens: int, seed: int | None, deterministic: bool) -> random.Random:
    if not deterministic:
        return random.Random()
    key = json.dumps([model, prompt, max_tokens, seed], sort_keys=True, separators=(",", ":"), default=str)
    return random.Random(int.from_bytes(hashlib.sha256(key.encode()).digest()[:8], "big"))


def answer_length(rng: random.Random, max_tokens: int, ignore_eos: bool) -> tuple[int, str]:
    """How many tokens the answer has and why it ends: ("length") cut at max_tokens or ("stop") ended by itself."""
    if ignore_eos:
        return max_tokens, "length"
    natural = 8 + int(rng.expovariate(1.0 / MEAN_ANSWER_TOKENS))
    return (natural, "stop") if natural < max_tokens else (max_tokens, "length")


def words(rng: random.Random, n: int) -> list[str]:
    """The answer's tokens as they are streamed: the first bare, every later one with its leading space."""
    out = [rng.choice(VOCABULARY) for _ in range(n)]
    return [w if i == 0 else " " + w for i, w in enumerate(out)]
