"""What the requests say: independent prompts (today's mix), shared-prefix groups, or multi-turn conversations.

Real traffic repeats itself, and a prefix-caching engine (vLLM, SGLang) skips the prefill of what it has cached, so
how much of each prompt is shared decides most of the time to first token. These generators make that structure
explicit and reproducible (same seed, same requests in the same order):

* `shared-prefix` follows SGLang's `generated-shared-prefix` benchmark (64 groups x 16 prompts, a 2,048-token system
  prompt per group, a 128-token question, a 256-token answer), scaled down by default so that a run fits one
  small machine: 32 groups x 16 prompts, 2,048 + 128 tokens, 64-token answers. Every (group, prompt) pair is sent
  once in a seeded shuffled order before any repeats.
* `multi-turn`: sessions that each send a growing conversation (a per-session context, then each turn's question
  and the previous answers) over several turns, with an exponential think time between a session's turns. Session
  starts follow the rate curve divided by the turns, so the request rate is about the curve's.

Token counts follow the simulator's estimate (about 4 characters per token), so a 2,048-token system prompt is
8,192 characters. The load stays open-loop: a session's next turn is sent at its planned time, whatever happened to
the previous one; its conversation carries a synthetic previous answer of the configured length.
"""

from __future__ import annotations

import random
from dataclasses import dataclass
from typing import Any

WORKLOADS = ("independent", "shared-prefix", "multi-turn")
_WORDS = ("fleet gpu token batch prefill decode cache queue latency power node pool route weight scale drain cordon "
          "alert metric sample shard merge policy tenant invoice order refund shipping account contract clause "
          "summary report question answer context document section table figure").split()


def text_of(tokens: int, rng: random.Random, tag: str = "") -> str:
    """About `tokens` tokens of words (4 characters each), starting with `tag` so that texts differ at once. The
    words drawn do not depend on the tag, so that tagged runs of one seed (bench/prefix.py tags each policy's texts)
    draw the same arrivals, group order and think times after it."""
    chars = max(1, tokens) * 4
    words = []
    size = 0
    while size < chars:
        word = rng.choice(_WORDS)
        words.append(word)
        size += len(word) + 1
    body = " ".join(words)
    return (f"{tag} {body}" if tag else body)[:chars]


@dataclass(frozen=True)
class Planned:
    """One request of a workload: when to send it (seconds from the start) and what it says."""

    t: float
    messages: list[dict[str, str]]
    max_tokens: int
    key: str  # group/prompt or session/turn, for tests and reports


@dataclass(frozen=True)
class SharedPrefix:
    groups: int = 32
    prompts_per_group: int = 16
    system_tokens: int = 2048
    question_tokens: int = 128
    answer_tokens: int = 64
    tag: str = ""  # prepended to every text: the same structure and arrivals with texts no cache has seen (benches)

    def check(self) -> None:
        _check_int("--groups", self.groups, 1, 10_000)
        _check_int("--prompts-per-group", self.prompts_per_group, 1, 10_000)
        _check_int("--system-tokens", self.system_tokens, 1, 100_000)
        _check_int("--question-tokens", self.question_tokens, 1, 100_000)
        _check_int("--answer-tokens", self.answer_tokens, 1, 32_768)

    def plan(self, arrivals: list[float], rng: random.Random) -> list[Planned]:
        systems = [text_of(self.system_tokens, rng, f"{self.tag}[system {g}]") for g in range(self.groups)]
        questions = [[text_of(self.question_tokens, rng, f"{self.tag}[question {g}.{p}]")
                      for p in range(self.prompts_per_group)] for g in range(self.groups)]
        pairs = [(g, p) for g in range(self.groups) for p in range(self.prompts_per_group)]
        order: list[tuple[int, int]] = []
        out = []
        for t in arrivals:
            if not order:
                order = pairs[:]
                rng.shuffle(order)
            g, p = order.pop()
            out.append(Planned(t, [{"role": "system", "content": systems[g]},
                                   {"role": "user", "content": questions[g][p]}], self.answer_tokens, f"g{g}/p{p}"))
        return out


@dataclass(frozen=True)
class MultiTurn:
    turns: int = 4
    context_tokens: int = 1024
    turn_tokens: int = 128
    answer_tokens: int = 64
    think_s: float = 3.0
    tag: str = ""  # as SharedPrefix.tag

    def check(self) -> None:
        _check_int("--turns", self.turns, 1, 1000)
        _check_int("--context-tokens", self.context_tokens, 1, 100_000)
        _check_int("--turn-tokens", self.turn_tokens, 1, 100_000)
        _check_int("--answer-tokens", self.answer_tokens, 1, 32_768)
        if not 0 <= self.think_s <= 3600:
            raise ValueError(f"--think-s {self.think_s:g} must be between 0 and 3600")

    def plan(self, starts: list[float], rng: random.Random, duration_s: float) -> list[Planned]:
        """`starts` are session starts; each session's turns follow with exponential think times (mean think_s)
        plus nothing for the answer (open loop); turns planned past the duration are not sent."""
        out = []
        for s, t in enumerate(starts):
            context = text_of(self.context_tokens, rng, f"{self.tag}[session {s} context]")
            messages = [{"role": "system", "content": context}]
            for turn in range(self.turns):
                if turn:
                    messages = [*messages, {"role": "assistant", "content": text_of(self.answer_tokens, rng)}]
                    t += rng.expovariate(1.0 / self.think_s) if self.think_s > 0 else 0.0
                messages = [*messages, {"role": "user",
                                        "content": text_of(self.turn_tokens, rng, f"[session {s} turn {turn}]")}]
                if t >= duration_s:
                    break
                out.append(Planned(t, messages, self.answer_tokens, f"s{s}/t{turn}"))
        out.sort(key=lambda p: p.t)
        return out


def _check_int(flag: str, value: int, lo: int, hi: int) -> None:
    if not lo <= value <= hi:
        raise ValueError(f"{flag} {value} must be between {lo} and {hi}")


Workload = SharedPrefix | MultiTurn


def rate_divisor(workload: Workload | None) -> float:
    """Session starts per request: the rate curve is divided by this to plan arrivals."""
    return float(workload.turns) if isinstance(workload, MultiTurn) else 1.0


def plan(workload: Workload, arrivals: list[float], seed: Any, duration_s: float) -> list[Planned]:
    """The workload's requests for these arrival times (session starts for multi-turn), from its own generator
    seeded by `seed` (None: random), so the same seed gives the same requests whatever else drew numbers."""
    rng = random.Random(None if seed is None else f"workload-{seed}")
    if isinstance(workload, MultiTurn):
        return workload.plan(arrivals, rng, duration_s)
    return workload.plan(arrivals, rng)
