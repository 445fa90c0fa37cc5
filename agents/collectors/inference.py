"""Inference-server metrics scraped from a vLLM or SGLang Prometheus `/metrics` endpoint.

Reads the current vLLM names, the older vLLM (v0) names and SGLang's. Counters become per-second rates and
histograms become interval percentiles, both from the difference between two scrapes: a percentile over the
server's whole lifetime would hide the spike the dashboard exists to show. Series with several label sets (models,
engines, data-parallel ranks) are added up; ratios are averaged.
"""

from __future__ import annotations

import logging
import math
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Any

import httpx

from agents.catalogue import INFERENCE_METRICS
from agents.collectors.base import Metrics, empty, finite

log = logging.getLogger(__name__)

Labels = dict[str, str]
Families = dict[str, list[tuple[Labels, float]]]
SeriesKey = frozenset[tuple[str, str]]
Buckets = dict[float, float]  # upper bound (le) -> cumulative count

INF = math.inf

# Candidate sample names in order of preference: current vLLM, old vLLM, SGLang.
RUNNING = ("vllm:num_requests_running", "sglang:num_running_reqs")
WAITING = ("vllm:num_requests_waiting", "sglang:num_queue_reqs")
KV_USAGE = ("vllm:kv_cache_usage_perc", "vllm:gpu_cache_usage_perc", "sglang:token_usage")  # 0-1 ratios
PROMPT_TOKENS = ("vllm:prompt_tokens_total", "sglang:prompt_tokens_total")
GENERATION_TOKENS = ("vllm:generation_tokens_total", "sglang:generation_tokens_total")
PROMPT_THROUGHPUT = ("vllm:avg_prompt_throughput_toks_per_s",)  # old vLLM gauges, used when no counter exists
GENERATION_THROUGHPUT = ("vllm:avg_generation_throughput_toks_per_s",)
PREFIX_QUERIES = ("vllm:prefix_cache_queries_total",)
PREFIX_HITS = ("vllm:prefix_cache_hits_total",)
PREFIX_HIT_RATE = ("vllm:gpu_prefix_cache_hit_rate", "sglang:cache_hit_rate")  # 0-1 gauges
PREEMPTIONS = ("vllm:num_preemptions_total", "vllm:num_preemptions")
REQUEST_OUTCOMES = ("vllm:request_success_total",)
ABORTED = ("sglang:num_aborted_requests_total",)
ERROR_REASONS = frozenset({"abort", "error"})  # vLLM's finished_reason values that mean the request failed
TTFT = ("vllm:time_to_first_token_seconds", "sglang:time_to_first_token_seconds")
ITL = ("vllm:inter_token_latency_seconds", "vllm:time_per_output_token_seconds",
       "sglang:inter_token_latency_seconds", "sglang:time_per_output_token_seconds")
E2E = ("vllm:e2e_request_latency_seconds", "sglang:e2e_request_latency_seconds")
QUEUE = ("vllm:request_queue_time_seconds", "sglang:queue_time_seconds")


# -- Prometheus text format --------------------------------------------------------------------------------

def parse_prometheus(text: str) -> Families:
    """Parse the Prometheus text exposition format into {sample name: [(labels, value), ...]}.

    Comments (HELP, TYPE, OpenMetrics' EOF) are skipped; a malformed line is skipped rather than failing the
    scrape, because one odd metric of some other library must not blank out the inference numbers.
    """
    out: Families = {}
    for raw in text.splitlines():
        line = raw.strip()
        if not line or line.startswith("#"):
            continue
        try:
            name, labels, value = _parse_line(line)
        except (ValueError, IndexError):
            log.debug("unparseable metrics line: %.200s", line)
            continue
        out.setdefault(name, []).append((labels, value))
    return out


def _parse_line(line: str) -> tuple[str, Labels, float]:
    i, n = 0, len(line)
    while i < n and line[i] not in "{ \t":
        i += 1
    name = line[:i]
    if not name:
        raise ValueError("no metric name")
    while i < n and line[i] in " \t":  # the format allows blanks between tokens
        i += 1
    labels: Labels = {}
    if i < n and line[i] == "{":
        i += 1
        while True:
            while line[i] in " \t,":
                i += 1
            if line[i] == "}":
                i += 1
                break
            eq = line.index("=", i)
            key = line[i:eq].strip()
            i = eq + 1
            while line[i] in " \t":
                i += 1
            if line[i] != '"':
                raise ValueError("label value is not quoted")
            i += 1
            chars: list[str] = []
            while line[i] != '"':
                if line[i] == "\\":
                    i += 1
                    chars.append("\n" if line[i] == "n" else line[i])
                else:
                    chars.append(line[i])
                i += 1
            i += 1
            labels[key] = "".join(chars)
    parts = line[i:].split()
    if not parts:
        raise ValueError("no value")
    return name, labels, float(parts[0])  # float() reads NaN, +Inf and -Inf as Prometheus writes them


# -- deltas and percentiles ----------------------------------------------------------------------------------

def _key(labels: Labels, drop: str | None = None) -> SeriesKey:
    return frozenset((k, v) for k, v in labels.items() if k != drop)


def _first(families: Families, names: Iterable[str]) -> list[tuple[Labels, float]] | None:
    for name in names:
        if name in families:
            return families[name]
    return None


def _series(families: Families, names: Iterable[str]) -> dict[SeriesKey, float] | None:
    samples = _first(families, names)
    return None if samples is None else {_key(labels): value for labels, value in samples}


def _histogram(families: Families, names: Iterable[str]) -> dict[SeriesKey, Buckets] | None:
    for name in names:
        samples = families.get(f"{name}_bucket")
        if samples is None:
            continue
        out: dict[SeriesKey, Buckets] = {}
        for labels, value in samples:
            try:
                le = float(labels["le"])  # reads "+Inf" too
            except (KeyError, ValueError):
                continue
            if not math.isnan(le):
                out.setdefault(_key(labels, drop="le"), {})[le] = value
        return out
    return None


def counter_delta(prev: dict[SeriesKey, float], cur: dict[SeriesKey, float]) -> float:
    """Increase of a set of counter series; a series that went down was restarted and counted up from 0."""
    total = 0.0
    for key, value in cur.items():
        before = prev.get(key, 0.0)
        total += value - before if value >= before else value
    return total


def histogram_delta(prev: dict[SeriesKey, Buckets], cur: dict[SeriesKey, Buckets]) -> Buckets:
    """Bucket counts observed between two scrapes, all series merged into one cumulative histogram."""
    deltas: list[Buckets] = []
    for key, buckets in cur.items():
        before = prev.get(key)
        reset = before is None or before.keys() != buckets.keys() or any(buckets[le] < before[le] for le in buckets)
        deltas.append(dict(buckets) if reset else {le: buckets[le] - before[le] for le in buckets})
    merged: Buckets = {}
    for le in sorted({le for d in deltas for le in d}):
        # A series without this bound contributes its count at its own largest bound below it.
        merged[le] = sum(max((c for b, c in d.items() if b <= le), default=0.0) for d in deltas)
    return merged


def quantile(q: float, buckets: Buckets) -> float | None:
    """The q-quantile of a cumulative histogram, interpolated linearly inside its bucket (as PromQL does).

    None when the histogram holds no observations. A rank in the +Inf bucket returns the highest finite bound.
    """
    if not buckets or INF not in buckets or buckets[INF] <= 0:
        return None
    rank = q * buckets[INF]
    prev_le, prev_cum = 0.0, 0.0
    for le in sorted(buckets):
        cum = max(buckets[le], prev_cum)  # counts read bucket by bucket can be momentarily non-monotonic
        if cum >= rank:
            if le == INF:
                return prev_le
            if le <= 0 or cum == prev_cum:
                return le
            return prev_le + (le - prev_le) * (rank - prev_cum) / (cum - prev_cum)
        prev_le, prev_cum = le, cum
    return prev_le


def _sum(samples: list[tuple[Labels, float]] | None) -> float | None:
    values = [v for v in (finite(v) for _, v in samples or []) if v is not None]
    return sum(values) if values else None


def _mean_pct(samples: list[tuple[Labels, float]] | None) -> float | None:
    values = [v for v in (finite(v) for _, v in samples or []) if v is not None]
    return 100.0 * sum(values) / len(values) if values else None


# -- from scrapes to metrics ---------------------------------------------------------------------------------

@dataclass
class _Snapshot:
    t: float
    counters: dict[str, dict[SeriesKey, float] | None]
    histograms: dict[str, dict[SeriesKey, Buckets] | None]


class InferenceMetrics:
    """Turns successive parsed scrapes into INFERENCE_METRICS values (no I/O: the scraper feeds it)."""

    def __init__(self) -> None:
        self._prev: _Snapshot | None = None

    def update(self, families: Families, now: float) -> Metrics:
        snap = _Snapshot(now, self._counters(families), {
            "ttft": _histogram(families, TTFT),
            "itl": _histogram(families, ITL),
            "e2e": _histogram(families, E2E),
            "queue": _histogram(families, QUEUE),
        })
        prev, self._prev = self._prev, snap
        dt = None if prev is None else now - prev.t

        def delta(name: str) -> float | None:
            cur = snap.counters[name]
            if prev is None or cur is None:
                return None
            return counter_delta(prev.counters[name] or {}, cur)

        def rate(name: str) -> float | None:
            d = delta(name)
            return None if d is None or dt is None or dt <= 0 else d / dt

        def pct(name: str, q: float) -> float | None:
            cur = snap.histograms[name]
            if prev is None or cur is None:
                return None
            return quantile(q, histogram_delta(prev.histograms[name] or {}, cur))

        m = empty(INFERENCE_METRICS)
        m["requests_running"] = _sum(_first(families, RUNNING))
        m["requests_waiting"] = _sum(_first(families, WAITING))
        m["kv_cache_usage_pct"] = _mean_pct(_first(families, KV_USAGE))
        m["prompt_tokens_s"] = (rate("prompt") if snap.counters["prompt"] is not None
                                else _sum(_first(families, PROMPT_THROUGHPUT)))
        m["generation_tokens_s"] = (rate("generation") if snap.counters["generation"] is not None
                                    else _sum(_first(families, GENERATION_THROUGHPUT)))
        m["ttft_p50_s"] = pct("ttft", 0.5)
        m["ttft_p95_s"] = pct("ttft", 0.95)
        m["itl_p50_s"] = pct("itl", 0.5)
        m["e2e_p95_s"] = pct("e2e", 0.95)
        m["queue_time_p95_s"] = pct("queue", 0.95)
        if snap.counters["prefix_queries"] is not None:
            queries, hits = delta("prefix_queries"), delta("prefix_hits")
            if queries and hits is not None:
                m["prefix_cache_hit_pct"] = min(100.0, 100.0 * hits / queries)
        else:
            m["prefix_cache_hit_pct"] = _mean_pct(_first(families, PREFIX_HIT_RATE))
        m["preemptions_total"] = _sum(_first(families, PREEMPTIONS))
        m["request_errors_s"] = rate("errors")
        return m

    @staticmethod
    def _counters(families: Families) -> dict[str, dict[SeriesKey, float] | None]:
        outcomes = _first(families, REQUEST_OUTCOMES)
        if outcomes is not None:
            errors: dict[SeriesKey, float] | None = {
                _key(labels): v for labels, v in outcomes if labels.get("finished_reason") in ERROR_REASONS
            }
        else:
            errors = _series(families, ABORTED)
        return {
            "prompt": _series(families, PROMPT_TOKENS),
            "generation": _series(families, GENERATION_TOKENS),
            "prefix_queries": _series(families, PREFIX_QUERIES),
            "prefix_hits": _series(families, PREFIX_HITS),
            "errors": errors,
        }


class InferenceScraper:
    """Scrapes `{base_url}/metrics` (and `{base_url}/v1/models`) of a vLLM or SGLang server."""

    def __init__(self, base_url: str, timeout: float = 5.0, client: httpx.Client | None = None,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self.base_url = base_url.rstrip("/")
        self._client = client if client is not None else httpx.Client(timeout=timeout)
        self._clock = clock
        self._metrics = InferenceMetrics()
        self._reachable: bool | None = None

    def collect(self) -> Metrics:
        try:
            resp = self._client.get(f"{self.base_url}/metrics")
            resp.raise_for_status()
            families = parse_prometheus(resp.text)
        except httpx.HTTPError as exc:
            # Logged on the change only: a node without its server would otherwise log every few seconds.
            if self._reachable is not False:
                log.warning("inference server %s/metrics unreachable (%s); inference metrics are null until it "
                            "answers", self.base_url, exc)
            self._reachable = False
            return empty(INFERENCE_METRICS)
        if self._reachable is False:
            log.info("inference server %s answers again", self.base_url)
        self._reachable = True
        return self._metrics.update(families, self._clock())

    def models(self) -> list[str] | None:
        """Model ids from the server's OpenAI-compatible `/v1/models`, or None when it cannot be read."""
        try:
            resp = self._client.get(f"{self.base_url}/v1/models")
            resp.raise_for_status()
            data: Any = resp.json()
            return [str(m["id"]) for m in data["data"]]
        except (httpx.HTTPError, ValueError, KeyError, TypeError) as exc:
            log.debug("%s/v1/models: %s", self.base_url, exc)
            return None

    def close(self) -> None:
        self._client.close()
