"""The open-loop runner: arrivals follow the rate curve whatever the server does (a closed loop would slow down with
the server and hide exactly the overload an operator needs to see). Arrivals are a non-homogeneous Poisson process,
drawn by thinning against the curve's peak rate."""

from __future__ import annotations

import asyncio
import contextlib
import random
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import httpx
import orjson

from control.loadgen.curves import Curve, peak_of
from control.loadgen.mix import Mix
from control.loadgen.workloads import Workload, plan, rate_divisor

_WORDS = ("fleet gpu token batch prefill decode cache queue latency power node pool route weight scale drain cordon "
          "alert metric sample shard merge policy").split()


@dataclass
class Outcome:
    """One request as the client saw it. status 0 = no HTTP answer (connection error, timeout, client overload)."""

    sent_at: float
    cls: str
    stream: bool
    status: int = 0
    latency_s: float = 0.0
    ttft_s: float | None = None
    completion_tokens: int = 0
    node: str = ""
    error: str = ""
    # Seconds to the answer's status line and headers: for a streamed answer the rest is streaming; a non-streamed
    # one has its headers only once the whole answer is ready (the benches split the client's time with it).
    headers_s: float | None = None
    # What was asked (independent prompts only; 0 for a workload's requests): lets a bench's trace tell long
    # prompts and answers from short ones.
    prompt_tokens: int = 0
    max_tokens: int = 0


@dataclass
class LoadSpec:
    url: str
    model: str
    curve: Curve
    duration_s: float
    prompt_tokens: Mix
    max_tokens: Mix
    classes: Mix
    stream_fraction: float = 0.5
    temperature: float = 0.7
    token: str = ""
    timeout_s: float = 120.0
    max_outstanding: int = 2000
    seed: int | None = None
    path: str = "/v1/chat/completions"
    extra_headers: dict[str, str] = field(default_factory=dict)
    # Merged into every request body, e.g. {"ignore_eos": True} (vLLM's extension) so that each answer is exactly
    # max_tokens long and runs that are compared differ only in where the requests went.
    extra_body: dict[str, Any] = field(default_factory=dict)
    # None: independent prompts drawn from prompt_tokens / max_tokens; else shared-prefix or multi-turn
    # (workloads.py), whose requests come from their own seeded generator.
    workload: Workload | None = None
    prompt_tag: str = ""  # independent prompts start with it: the same sequence with texts no cache has seen
    # Further base URLs: requests go to url and these in turn, as a round-robin load balancer in front of several
    # gateways would send them (bench/prefix.py --gateways).
    more_urls: tuple[str, ...] = ()


def arrivals(curve: Curve, duration_s: float, rng: random.Random, divisor: float = 1.0) -> list[float]:
    """Poisson arrival times of the curve / divisor over the duration (thinning against the peak)."""
    peak = peak_of(curve, duration_s) / divisor
    out: list[float] = []
    t = 0.0
    while True:
        t += rng.expovariate(peak)
        if t >= duration_s:
            return out
        if rng.random() * peak <= curve(t) / divisor:
            out.append(t)


def prompt_of(tokens: int, rng: random.Random) -> str:
    # About one word per token plus a nonce, so identical prompts (and answer-cache hits) happen only when asked for.
    words = [rng.choice(_WORDS) for _ in range(max(1, tokens - 1))]
    return f"[{rng.getrandbits(40):x}] " + " ".join(words)


async def _one(client: httpx.AsyncClient, spec: LoadSpec, out: Outcome, body: bytes, headers: dict[str, str]) -> None:
    start = time.perf_counter()
    try:
        if out.stream:
            async with client.stream("POST", spec.path, content=body, headers=headers) as resp:
                out.headers_s = time.perf_counter() - start
                out.status, out.node = resp.status_code, resp.headers.get("x-switchyard-node", "")
                if resp.status_code != 200:
                    out.error = (await resp.aread()).decode(errors="replace")[:200]
                    out.latency_s = time.perf_counter() - start
                    return
                async for line in resp.aiter_lines():
                    if not line.startswith("data: ") or line == "data: [DONE]":
                        continue
                    if _chunk_has_text(line[6:]):
                        # The first token, not the first event: a chat stream may open with a role-only chunk
                        # before the prefill (the simulator does), which would make every TTFT look instant.
                        if out.ttft_s is None:
                            out.ttft_s = time.perf_counter() - start
                        out.completion_tokens += 1
        else:
            resp = await client.post(spec.path, content=body, headers=headers)
            out.headers_s = time.perf_counter() - start
            out.status, out.node = resp.status_code, resp.headers.get("x-switchyard-node", "")
            if resp.status_code == 200:
                usage = orjson.loads(resp.content).get("usage") or {}
                out.completion_tokens = int(usage.get("completion_tokens") or 0)
            else:
                out.error = resp.text[:200]
    except httpx.TimeoutException:
        out.error = "timeout"
    except httpx.HTTPError as exc:
        out.error = f"{type(exc).__name__}: {exc}"[:200]
    out.latency_s = time.perf_counter() - start


def _chunk_has_text(data: str) -> bool:
    try:
        choice = (orjson.loads(data).get("choices") or [{}])[0]
    except (orjson.JSONDecodeError, AttributeError, IndexError):
        return False
    delta = choice.get("delta") or {}
    return bool(delta.get("content") or choice.get("text"))


def _schedule(spec: LoadSpec, rng: random.Random, peak: float) -> Any:
    """(send time, messages or None, max_tokens) in time order. Independent prompts are drawn lazily (as before);
    a workload's requests are planned up front from its own seeded generator."""
    if spec.workload is not None:
        times = arrivals(spec.curve, spec.duration_s, rng, rate_divisor(spec.workload))
        for p in plan(spec.workload, times, spec.seed, spec.duration_s):
            yield p.t, p.messages, p.max_tokens
        return
    t = 0.0
    while True:
        t += rng.expovariate(peak)
        if t >= spec.duration_s:
            return
        if rng.random() * peak > spec.curve(t):
            continue  # thinning: keep the candidate with probability rate(t) / peak
        yield t, None, 0


async def run(spec: LoadSpec, progress: Callable[[float, int], None] | None = None) -> list[Outcome]:
    """Send the load; returns every outcome (in send order). `progress(elapsed_s, sent)` is called about 4x a second."""
    rng = random.Random(spec.seed)
    peak = peak_of(spec.curve, spec.duration_s)
    headers = {"Content-Type": "application/json", **spec.extra_headers}
    if spec.token:
        headers["Authorization"] = f"Bearer {spec.token}"
    limits = httpx.Limits(max_connections=spec.max_outstanding, max_keepalive_connections=min(512, spec.max_outstanding))
    outcomes: list[Outcome] = []
    tasks: set[asyncio.Task[None]] = set()
    async with contextlib.AsyncExitStack() as stack:
        clients = [await stack.enter_async_context(httpx.AsyncClient(base_url=url, timeout=spec.timeout_s,
                                                                     limits=limits))
                   for url in (spec.url, *spec.more_urls)]
        t0 = time.perf_counter()
        last_report = 0.0
        for t, messages, max_tokens in _schedule(spec, rng, peak):
            delay = t0 + t - time.perf_counter()
            if delay > 0:
                await asyncio.sleep(delay)
            cls, stream = spec.classes.pick(rng), rng.random() < spec.stream_fraction
            out = Outcome(sent_at=t, cls=cls, stream=stream)
            outcomes.append(out)
            if len(tasks) >= spec.max_outstanding:
                out.error = "client overloaded (--max-outstanding reached)"
                continue
            if messages is None:
                out.prompt_tokens = spec.prompt_tokens.pick(rng)
                messages = [{"role": "user", "content": spec.prompt_tag + prompt_of(out.prompt_tokens, rng)}]
                max_tokens = out.max_tokens = spec.max_tokens.pick(rng)
            payload = {"model": spec.model, "messages": messages, "max_tokens": max_tokens,
                       "temperature": spec.temperature, "stream": stream, **spec.extra_body}
            client = clients[(len(outcomes) - 1) % len(clients)]
            task = asyncio.create_task(_one(client, spec, out, orjson.dumps(payload), {**headers, "X-Priority": cls}))
            tasks.add(task)
            task.add_done_callback(tasks.discard)
            if progress and t - last_report >= 0.25:
                last_report = t
                progress(t, len(outcomes))
        if tasks:
            await asyncio.wait(tasks)
    if progress:
        progress(spec.duration_s, len(outcomes))
    return outcomes
