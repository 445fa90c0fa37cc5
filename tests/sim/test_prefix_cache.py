"""The simulated engine's prefix cache: it lives in the KV capacity (evicted when running sequences need the
memory, not at a fixed block count), a hit skips the prefill of the cached tokens, and `/metrics` shows it under
vLLM's names (or SGLang's gauge), which the agent's scraper turns into `prefix_cache_hit_pct`."""

from __future__ import annotations

import asyncio
import dataclasses

import httpx
import pytest

from agents.collectors.inference import InferenceMetrics, parse_prometheus
from agents.sim.background import BackgroundFleet
from agents.sim.engine import PREFIX_BLOCK_TOKENS, Engine, SimRequest, block_keys
from agents.sim.metrics import render
from agents.sim.profiles import PROFILES
from tests.sim.conftest import MODEL

SMALL = dataclasses.replace(PROFILES["h100"], kv_tokens=6_000)


async def _run(engine: Engine, text: str, tokens: int, out: int = 2) -> SimRequest:
    req = SimRequest(prompt_tokens=tokens, target_tokens=out, finish_reason="length", prefix_text=text)
    engine.submit(req)
    await req.done
    return req


def _doc(tag: str, tokens: int) -> str:
    # Distinct from its first character, `tokens` tokens long (4 characters each).
    return (tag * (tokens * 4))[: tokens * 4]


def test_block_keys_are_chained() -> None:
    a = block_keys("x" * 64 + "y" * 64)
    b = block_keys("z" * 64 + "y" * 64)
    assert len(a) == len(b) == 2
    assert a[1] != b[1]  # the same block after a different prefix is another block
    assert block_keys("x" * 64 + "q" * 64)[0] == a[0]
    assert block_keys("x" * 63) == []  # a partial block is never cached


def test_a_repeated_prompt_prefills_only_the_uncached_tokens() -> None:
    async def main() -> tuple[SimRequest, SimRequest, Engine]:
        engine = Engine(SMALL, time_scale=1000.0)
        try:
            first = await _run(engine, _doc("a", 2_000), 2_000)
            second = await _run(engine, _doc("a", 2_000) + "a different question at the end", 2_010)
            return first, second, engine
        finally:
            await engine.close()

    first, second, engine = asyncio.run(main())
    assert first.prefill_tokens == 2_000
    # Every whole block of the shared 2,000 tokens was cached; only the tail is computed again.
    assert second.prefill_tokens == 2_010 - 2_000 // PREFIX_BLOCK_TOKENS * PREFIX_BLOCK_TOKENS
    assert engine.prefix_hits_total == 2_000 // PREFIX_BLOCK_TOKENS * PREFIX_BLOCK_TOKENS
    assert engine.prefix_queries_total == 4_010
    assert engine.prompt_tokens_total == first.prefill_tokens + second.prefill_tokens
    assert second.ttft < first.ttft


def test_running_sequences_evict_cached_blocks_when_they_need_the_memory() -> None:
    async def main(crowd: bool) -> tuple[SimRequest, int]:
        engine = Engine(SMALL, time_scale=1000.0)
        try:
            await _run(engine, _doc("a", 2_000), 2_000)
            cached = engine.prefix_cached_blocks
            if crowd:
                # 5,500 tokens of another prompt plus its answer leave less than 500 tokens of the 6,000 free.
                await _run(engine, _doc("b", 5_500), 5_500, out=20)
            again = await _run(engine, _doc("a", 2_000), 2_000)
            return again, cached
        finally:
            await engine.close()

    kept, cached = asyncio.run(main(crowd=False))
    assert cached == 2_000 * 4 // 64  # every block of the first prompt stayed in the free KV memory
    assert kept.prefill_tokens == 1  # all cached (one token is always computed)
    evicted, _ = asyncio.run(main(crowd=True))
    # The big request needed the memory: the first prompt's blocks were evicted, so it is prefilled again.
    assert evicted.prefill_tokens == 2_000


def test_vllm_metric_names_and_the_agents_hit_rate() -> None:
    async def main() -> tuple[str, str]:
        engine = Engine(SMALL, time_scale=1000.0)
        try:
            await _run(engine, _doc("a", 1_000), 1_000)
            before = render(engine, MODEL)
            await _run(engine, _doc("a", 1_000), 1_000)  # all but one token cached
            return before, render(engine, MODEL)
        finally:
            await engine.close()

    before, after = asyncio.run(main())
    fam = parse_prometheus(after)
    assert fam["vllm:prefix_cache_queries_total"][0][1] == 2_000
    assert fam["vllm:prefix_cache_hits_total"][0][1] == 992  # 62 whole blocks of 16 tokens
    conv = InferenceMetrics()
    conv.update(parse_prometheus(before), now=0.0)
    m = conv.update(fam, now=5.0)
    # Over the interval: 992 of 1,000 queried tokens were hits.
    assert m["prefix_cache_hit_pct"] == pytest.approx(99.2)


def test_sglang_style_nodes_expose_cache_hit_rate_and_the_agent_reads_it() -> None:
    async def main() -> str:
        engine = Engine(SMALL, time_scale=1000.0)
        try:
            await _run(engine, _doc("a", 1_000), 1_000)
            await _run(engine, _doc("a", 1_000), 1_000)
            return render(engine, MODEL, style="sglang")
        finally:
            await engine.close()

    text = asyncio.run(main())
    fam = parse_prometheus(text)
    assert not any(name.startswith("vllm:") for name in fam)
    assert fam["sglang:cache_hit_rate"][0][1] == pytest.approx(992 / 2_000)
    m = InferenceMetrics().update(fam, now=0.0)
    assert m["prefix_cache_hit_pct"] == pytest.approx(49.6)
    assert m["requests_running"] == 0


def test_a_node_over_http_reports_hits_of_a_shared_system_prompt(fleet: BackgroundFleet,
                                                                 client: httpx.Client) -> None:
    node = fleet.add_node(profile="h100")
    system = "You are the assistant of a very particular shop. " * 60
    for q in ("first question", "second question", "third question"):
        resp = client.post(f"{node.url}/v1/chat/completions", json={
            "model": MODEL, "max_tokens": 4, "messages": [{"role": "system", "content": system},
                                                         {"role": "user", "content": q}]})
        assert resp.status_code == 200
    fam = parse_prometheus(client.get(f"{node.url}/metrics").text)
    hits, queries = fam["vllm:prefix_cache_hits_total"][0][1], fam["vllm:prefix_cache_queries_total"][0][1]
    assert hits / queries > 0.5  # two of the three found the system prompt cached
    fleet.call(lambda f: setattr(f.node(node.name), "metrics_style", "sglang"))
    fam = parse_prometheus(client.get(f"{node.url}/metrics").text)
    assert fam["sglang:cache_hit_rate"][0][1] > 0.5


def test_a_fleet_started_sglang_style_exposes_sglangs_names(client: httpx.Client) -> None:
    with BackgroundFleet(pool="sg", model=MODEL, gpus=1, time_scale=20.0, metrics_style="sglang") as fleet:
        node = fleet.add_node(profile="h100")
        fam = parse_prometheus(client.get(f"{node.url}/metrics").text)
        assert "sglang:cache_hit_rate" in fam and "vllm:prefix_cache_hits_total" not in fam


def test_an_unknown_metrics_style_is_refused() -> None:
    from agents.sim.fleet import SimFleet

    with pytest.raises(ValueError, match="unknown metrics style 'tgi'"):
        SimFleet(metrics_style="tgi")
