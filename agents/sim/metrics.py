"""A simulated node's `/metrics`: Prometheus text with the metric names vLLM (v1) exports, or SGLang's.

These are the names agents/collectors/inference.py reads, so the real agent scraper turns a sim node's metrics into
every inference catalogue metric, the way it does for a real vLLM (`style="vllm"`, the default) or a real SGLang
server (`style="sglang"`: its names, and the prefix cache as the `sglang:cache_hit_rate` gauge over recent requests
instead of vLLM's query/hit token counters).
"""

from __future__ import annotations

from agents.sim.engine import Engine, Histogram


def _esc(value: str) -> str:
    return value.replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n")


def _num(value: float) -> str:
    if value == float("inf"):
        return "+Inf"
    return repr(float(value)) if not float(value).is_integer() else f"{int(value)}.0"


STYLES = ("vllm", "sglang")


def render(engine: Engine, model: str, engine_id: str = "0", style: str = "vllm") -> str:
    if style == "sglang":
        return _render_sglang(engine, model)
    labels = f'engine="{engine_id}",model_name="{_esc(model)}"'
    out: list[str] = []

    def metric(name: str, kind: str, help: str, value: float, extra: str = "") -> None:
        out.append(f"# HELP {name} {help}")
        out.append(f"# TYPE {name} {kind}")
        out.append(f"{name}{{{labels}{extra}}} {_num(value)}")

    def histogram(name: str, help: str, h: Histogram) -> None:
        out.append(f"# HELP {name} {help}")
        out.append(f"# TYPE {name} histogram")
        for le, cum in h.cumulative():
            out.append(f'{name}_bucket{{{labels},le="{_num(le)}"}} {_num(cum)}')
        out.append(f"{name}_sum{{{labels}}} {_num(h.sum)}")
        out.append(f"{name}_count{{{labels}}} {_num(h.count)}")

    metric("vllm:num_requests_running", "gauge", "Number of requests in model execution batches.",
           len(engine.running))
    metric("vllm:num_requests_waiting", "gauge", "Number of requests waiting to be processed.", len(engine.waiting))
    metric("vllm:kv_cache_usage_perc", "gauge", "KV-cache usage. 1 means 100 percent usage.", engine.kv_usage)
    metric("vllm:prefix_cache_queries_total", "counter", "Prefix cache queries, in terms of number of queried tokens.",
           engine.prefix_queries_total)
    metric("vllm:prefix_cache_hits_total", "counter", "Prefix cache hits, in terms of number of cached tokens.",
           engine.prefix_hits_total)
    metric("vllm:num_preemptions_total", "counter", "Cumulative number of preemption from the engine.",
           engine.preemptions_total)
    metric("vllm:prompt_tokens_total", "counter", "Number of prefill tokens processed.", engine.prompt_tokens_total)
    metric("vllm:generation_tokens_total", "counter", "Number of generation tokens processed.",
           engine.generation_tokens_total)
    out.append("# HELP vllm:request_success_total Count of successfully processed requests.")
    out.append("# TYPE vllm:request_success_total counter")
    for reason, n in engine.finished_total.items():
        out.append(f'vllm:request_success_total{{{labels},finished_reason="{reason}"}} {_num(n)}')
    histogram("vllm:time_to_first_token_seconds", "Histogram of time to first token in seconds.", engine.ttft)
    histogram("vllm:inter_token_latency_seconds", "Histogram of inter-token latency in seconds.", engine.itl)
    histogram("vllm:e2e_request_latency_seconds", "Histogram of e2e request latency in seconds.", engine.e2e)
    histogram("vllm:request_queue_time_seconds", "Histogram of time spent in WAITING phase for request.",
              engine.queue_time)
    # Not a vLLM metric: how far the simulator itself fell behind (CPU starvation of the fleet process).
    out.append("# HELP sim:engine_lag_dropped_seconds_total Wall seconds the simulator ran behind its schedule.")
    out.append("# TYPE sim:engine_lag_dropped_seconds_total counter")
    out.append(f"sim:engine_lag_dropped_seconds_total{{{labels}}} {_num(engine.lag_dropped_s)}")
    return "\n".join(out) + "\n"


def _render_sglang(engine: Engine, model: str) -> str:
    labels = f'model_name="{_esc(model)}"'
    out: list[str] = []

    def metric(name: str, kind: str, help: str, value: float) -> None:
        out.extend((f"# HELP {name} {help}", f"# TYPE {name} {kind}", f"{name}{{{labels}}} {_num(value)}"))

    def histogram(name: str, help: str, h: Histogram) -> None:
        out.extend((f"# HELP {name} {help}", f"# TYPE {name} histogram"))
        for le, cum in h.cumulative():
            out.append(f'{name}_bucket{{{labels},le="{_num(le)}"}} {_num(cum)}')
        out.append(f"{name}_sum{{{labels}}} {_num(h.sum)}")
        out.append(f"{name}_count{{{labels}}} {_num(h.count)}")

    metric("sglang:num_running_reqs", "gauge", "The number of running requests.", len(engine.running))
    metric("sglang:num_queue_reqs", "gauge", "The number of requests in the waiting queue.", len(engine.waiting))
    metric("sglang:token_usage", "gauge", "The token usage.", engine.kv_usage)
    metric("sglang:cache_hit_rate", "gauge", "The prefix cache hit rate.", engine.recent_hit_rate())
    metric("sglang:prompt_tokens_total", "counter", "Number of prefill tokens processed.", engine.prompt_tokens_total)
    metric("sglang:generation_tokens_total", "counter", "Number of generation tokens processed.",
           engine.generation_tokens_total)
    histogram("sglang:time_to_first_token_seconds", "Histogram of time to first token in seconds.", engine.ttft)
    histogram("sglang:e2e_request_latency_seconds", "Histogram of End-to-end request latency in seconds",
              engine.e2e)
    histogram("sglang:queue_time_seconds", "Histogram of queueing time in seconds.", engine.queue_time)
    return "\n".join(out) + "\n"
