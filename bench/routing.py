"""Routing policies compared on a heterogeneous simulated fleet near saturation (issue 5).

One `manage.py simfleet --profile mixed` (h100, a100, l40s in turn) whose agents push every 5 s to a
`manage.py serve`, so node samples reach Redis exactly as in production; one `manage.py gateway --auth off` in
front of it. For each configuration the bench activates a `scheduler` policy (a new revision through the policy
service, as the API does; the gateway reloads on `sy:policy`), waits for the fleet to be idle and for a fresh
sample, then sends the same seeded open-loop Poisson sequence (`control.loadgen.runner`) through the gateway:

    round_robin      picker.strategy round_robin (scores ignored)
    least_in_flight  picker.strategy least_in_flight (the gateway's own in-flight count per node)
    classic          highest score with only 0.6*gpu_free + 0.3*(1-cpu_load) - 0.1*latency, burst correction 0,
                     on the agents' 5-second samples (what the literal weighted formula does)
    switchyard       the default scheduler policy (the classic weights plus expected_wait), told the bench's goodput
                     SLO as its slo.latency_s (the operator's latency target; `--no-policy-slo`: left null)

The rate is calibrated, not trusted from the hardware profiles: the saturation computed from them (a full batch on
every node, routed in exact proportion to speed) is printed, then least_in_flight runs short probes at rising shares
of it (`--probe`) and the bench uses the highest probe at which least_in_flight stayed stable (no errors, throughput
kept up, no growing queue, p95 within `--stable-x` times the slowest profile's unloaded latency). `--load` or
`--rate` skip the calibration. Answers are exactly max_tokens long (`ignore_eos`), so runs differ only in where
requests went.

    .venv/bin/python bench/routing.py [--nodes 6] [--duration 60] [--load 0.7 | --rate R] [--seed 7] [--json out.json]

Target: switchyard p95 latency <= 0.5 x round_robin and <= 0.85 x least_in_flight.

`--sweep` (issue 14): after the calibration, round_robin, least_in_flight and switchyard at 50, 65, 80, 95 and 110 %
of least_in_flight's stable rate (`--sweep-points`), the same seeded sequence for each policy at a point; prints
p95 latency, p95 TTFT and goodput per policy and point, switchyard's ratios against least_in_flight (and round_robin
at the light points), and a verdict: p95 latency and p95 TTFT <= 0.85 x least_in_flight and goodput >= 1.0 x at
every point, and not worse than round_robin at light load (the points below 80 %). `--long` is the long-prompt case
(`--prompt-tokens 4000:0.5,6000:0.5`). `--trace` records the gateway's state every 0.5 s during switchyard's runs and
prints, per profile, the expected_wait the scheduler held at each send against the latency the request then had.
Each sweep run starts a fresh gateway; round_robin runs only below 80 % (`--sweep-all`: at every point). Every run
prints the CPU each process used (the simulated fleet, the gateway, the server, this process = the load generator),
what other processes used meanwhile, the machine's idle share and load average, and where the client's time went
(streamed requests' time to the response headers and their streaming, the gateway's own time through it).
"""

from __future__ import annotations

import argparse
import copy
import json
import os
import random
import sys
import tempfile
from collections import Counter
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench.benchlib import use_bench_database  # noqa: E402
from bench.loadrun import (  # noqa: E402, F401
    MODEL,
    POOL,
    CpuMeter,
    cpu_line,
    get_json,
    load_spec,
    send,
    sim_fleet,
    wait_for,
    wait_idle,
)
from control.scheduler.status import read_status  # noqa: E402  (the gateway runs --auth off: /metrics is open)

CONFIGS = ("round_robin", "least_in_flight", "classic", "switchyard")
SWEEP_CONFIGS = ("round_robin", "least_in_flight", "switchyard")
LONG_PROMPTS = "4000:0.5,6000:0.5"
LIGHT = 0.8  # --sweep: below this share of the stable rate the default must also not lose to round robin


def log(msg: str) -> None:
    print(msg, flush=True)


# --- what the fleet can serve -----------------------------------------------------------------------------------
def mean_prompt_tokens(mix: Any) -> float:
    """Prompt tokens as the simulator counts them, for the load generator's own prompts (its text and nonce)."""
    from agents.sim.text import chat_prompt_tokens
    from control.loadgen.runner import prompt_of

    rng = random.Random(0)
    total = sum(mix.weights)
    out = 0.0
    for value, weight in zip(mix.values, mix.weights, strict=True):
        n = sum(chat_prompt_tokens([{"role": "user", "content": prompt_of(value, rng)}]) for _ in range(50)) / 50
        out += n * weight / total
    return out


def node_rate(profile: Any, prompt: float, out: float) -> float:
    """Requests/s one node serves at saturation: a full batch (max sequences, or what the KV cache holds) decoding,
    each request costing its share of the batch's decode steps plus its own prefill (which stalls the batch)."""
    batch = max(1, min(profile.max_seqs, int(profile.kv_tokens // (prompt + out))))
    per_request_s = (out - 1) * profile.decode_step_s(batch) / batch + prompt / profile.prefill_tps
    return 1.0 / per_request_s


def unloaded_latency(profile: Any, prompt: float, out: float) -> float:
    """Seconds for one request alone on the node: its prefill (which yields the first token), then decode steps."""
    return prompt / profile.prefill_tps + profile.decode_s + (out - 1) * profile.decode_step_s(1)


# --- the policies -----------------------------------------------------------------------------------------------
CUSTOM: dict[str, dict[str, Any]] = {}  # --custom NAME=FILE: extra configurations (partial documents)
MARGIN: list[float] = []  # --slo-margin
POLICY_SLO: list[float] = []  # the goodput SLO, told to the default policy (slo.latency_s) unless --no-policy-slo


def policy(name: str) -> dict[str, Any]:
    from control.policy.defaults import default_document

    doc = default_document("scheduler")
    if name in CUSTOM:  # sections given replace those keys of the default; scorers are replaced as a whole
        for key, value in CUSTOM[name].items():
            if isinstance(value, dict) and isinstance(doc.get(key), dict):
                doc[key].update(value)
            else:
                doc[key] = value
    doc["cache"]["enabled"] = False  # no repeated prompts anyway; keep Redis out of the request path
    if POLICY_SLO and name not in CUSTOM:
        # The operator's SLO is the bench's goodput SLO: the default routes for it past saturation (issue 14).
        doc["slo"]["latency_s"] = POLICY_SLO[0]
    if MARGIN:
        doc["slo"]["margin"] = MARGIN[0]
    if name in ("round_robin", "least_in_flight"):
        doc["picker"]["strategy"] = name
    elif name == "classic":
        # The literal formula, whatever the defaults become: no burst correction, no queue/KV/in-flight terms.
        classic = {"gpu_free": (0.6, False), "cpu_load": (0.3, True), "latency": (-0.1, False)}
        doc["scorers"] = [{"metric": m, "weight": w, "invert": inv} for m, (w, inv) in classic.items()]
        doc["latency"] = {"source": "rtt", "normalise": "fixed", "scale_ms": 100.0}
        doc["picker"]["strategy"] = "highest"
        doc["load"]["burst_correction"] = 0.0
    return doc


def activate(name: str) -> int:
    from control.policy import service
    from core.audit.context import Origin

    current = service.active("scheduler")
    change = service.create_revision("scheduler", policy(name), f"bench/routing.py: {name}", current.pk,
                                     Origin.system("bench-routing"))
    return int(change.revision.pk)


# --- the processes ----------------------------------------------------------------------------------------------
def engine_lag(urls: list[str]) -> float:
    """Seconds the simulated engines fell behind their model (a starved CPU); 0 on an undisturbed run."""
    import httpx

    from agents.collectors.inference import parse_prometheus

    total = 0.0
    for url in urls:
        fams = parse_prometheus(httpx.get(f"{url}/metrics", timeout=5).text)
        total += sum(v for _, v in fams.get("sim:engine_lag_dropped_seconds_total", []))
    return total


# --- why a policy routes as it does (--trace) ----------------------------------------------------------------------
class Tracer:
    """Polls the gateway's live state key (`sy:gw:state:<id>`, rewritten every second) during a run, so that each
    request can be matched with what the scheduler believed about its node when it was sent: the node's seconds per
    slot, its in-flight count and its expected_wait E = slot x (in flight + 1), against the latency it then had."""

    def __init__(self, gateway_id: str) -> None:
        import threading

        self.key = f"sy:gw:state:{gateway_id}"
        self.rows: list[tuple[float, dict[str, dict[str, Any]]]] = []  # (perf_counter offset, node -> entry)
        self.queued: list[int] = []  # requests waiting in the gateway's own queue, per state document
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._poll, daemon=True)
        self.t0 = 0.0

    def start(self) -> None:
        import time

        self.t0 = time.perf_counter()
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(5)

    def _poll(self) -> None:
        import time

        from dashboard.metrics.latest import redis_client

        r = redis_client()
        last = None
        while not self._stop.wait(0.5):
            raw = r.get(self.key)
            if not raw or raw == last:
                continue
            last = raw
            doc = json.loads(raw)
            self.rows.append((time.perf_counter() - self.t0, {n["node"]: n for n in doc.get("nodes", [])}))
            self.queued.append(sum((doc.get("queues") or {}).values()))

    def explain(self, outs: list[Any], profiles: dict[str, str]) -> dict[str, Any]:
        import bisect

        times = [t for t, _ in self.rows]
        per: dict[str, dict[str, list[float]]] = {}
        # One row per answered request (the --json file's trace.requests): what the scheduler held about its node
        # at the send against what the request then had, to find which requests miss an SLO and why.
        requests: list[dict[str, Any]] = []
        for o in outs:
            if not (200 <= o.status < 300) or not o.node:
                continue
            i = bisect.bisect_right(times, o.sent_at) - 1
            if i < 0:
                continue
            entry = self.rows[i][1].get(o.node)
            if not entry or entry.get("slot_s") is None:
                continue
            e = max(entry["slot_s"] * (entry["in_flight"] + 1), entry.get("latency_s") or 0.0)  # the core's E
            requests.append({"t": round(o.sent_at, 3), "node": o.node, "profile": profiles.get(o.node, "?"),
                             "stream": o.stream, "prompt_tokens": o.prompt_tokens, "max_tokens": o.max_tokens,
                             "latency_s": round(o.latency_s, 3),
                             "ttft_s": None if o.ttft_s is None else round(o.ttft_s, 3),
                             "e": round(e, 3), "in_flight": entry["in_flight"], "slot_s": entry["slot_s"],
                             "floor_s": entry.get("latency_s"),
                             "others": {n: (x.get("in_flight"), x.get("slot_s"), x.get("latency_s"),
                                            (x.get("parts") or {}).get("slo"))
                                        for n, x in self.rows[i][1].items()}})
            d = per.setdefault(profiles.get(o.node, "?"), {"e": [], "lat": [], "inf": [], "slot": [], "ttft": []})
            if o.ttft_s is not None:
                d["ttft"].append(o.ttft_s)
            d["e"].append(e)
            d["lat"].append(o.latency_s)
            d["inf"].append(entry["in_flight"])
            d["slot"].append(entry["slot_s"])
        lines, summary = [], {}
        reasons: dict[str, Counter[str]] = {}
        for _, nodes in self.rows:
            for name, entry in nodes.items():
                reasons.setdefault(profiles.get(name, "?"), Counter())[entry.get("reason") or "eligible"] += 1
        for prof, counts in sorted(reasons.items()):
            total = sum(counts.values())
            lines.append(f"{prof} in the gateway's state: " + ", ".join(
                f"{why} {n / total:.0%}" for why, n in counts.most_common()))
        parts: dict[str, dict[str, list[float]]] = {}
        for _, nodes in self.rows:
            for name, entry in nodes.items():
                d = parts.setdefault(profiles.get(name, "?"), {})
                for k, v in (entry.get("parts") or {}).items():
                    d.setdefault(k, []).append(v)
                d.setdefault("score", []).append(entry.get("score") or 0.0)
        for prof, d in sorted(parts.items()):
            lines.append(f"{prof} score parts (mean over the run, min..max): " + ", ".join(
                f"{k} {sum(v) / len(v):+.3f} ({min(v):+.2f}..{max(v):+.2f})" for k, v in d.items() if any(v)))
        if self.queued:
            lines.append(f"gateway wait queue: mean {sum(self.queued) / len(self.queued):.1f}, max {max(self.queued)}")
        for prof in ("h100", "a100", "l40s"):
            d = per.get(prof)
            if not d:
                continue
            n = len(d["e"])
            ttfts = sorted(d.pop("ttft"))
            mean = {k: sum(v) / n for k, v in d.items()}
            summary[prof] = {"requests": n, **{f"mean_{k}": round(v, 4) for k, v in mean.items()}}
            lines.append(f"{prof}: {n} requests, in flight at send {mean['inf']:.1f}, slot {mean['slot']:.3f} s, "
                         f"expected_wait {mean['e']:.2f} s vs realised latency {mean['lat']:.2f} s "
                         f"(x{mean['lat'] / max(1e-9, mean['e']):.2f}), TTFT p95 "
                         f"{fmt(ttfts[int(0.95 * len(ttfts))] if ttfts else None)}")
        return {"per_profile": summary, "lines": lines, "samples": len(self.rows), "requests": requests}


ENGINE_FIGURES = {"e2e": "vllm:e2e_request_latency_seconds", "queue": "vllm:request_queue_time_seconds",
                  "ttft": "vllm:time_to_first_token_seconds"}


def engine_sums(urls: list[str]) -> dict[str, dict[str, float]]:
    """Per node URL, the engines' own histogram sums and counts (model seconds): e2e latency, queue time, TTFT."""
    import httpx

    from agents.collectors.inference import parse_prometheus

    out = {}
    for url in urls:
        fams = parse_prometheus(httpx.get(f"{url}/metrics", timeout=5).text)
        row = {}
        for key, name in ENGINE_FIGURES.items():
            row[f"{key}_sum"] = sum(v for _, v in fams.get(f"{name}_sum", []))
            row[f"{key}_count"] = sum(v for _, v in fams.get(f"{name}_count", []))
        out[url] = row
    return out


GATEWAY_FIGURES = {"gw_total": "sy_gateway_request_seconds", "gw_first": "sy_gateway_ttft_seconds"}


def gateway_sums(gw: str) -> dict[str, float]:
    """The gateway's own histogram sums and counts: each request's time through it (arrival to last byte) and to
    the node's first byte (non-streamed: the node's whole answer)."""
    import httpx

    from agents.collectors.inference import parse_prometheus

    fams = parse_prometheus(httpx.get(f"{gw}/metrics", timeout=5).text)
    out = {}
    for key, name in GATEWAY_FIGURES.items():
        out[f"{key}_sum"] = sum(v for _, v in fams.get(f"{name}_sum", []))
        out[f"{key}_count"] = sum(v for _, v in fams.get(f"{name}_count", []))
    return out


def time_split(outs: list[Any], gw0: dict[str, float], gw1: dict[str, float]) -> dict[str, float | None]:
    """Where the client's time went (means, seconds): streamed requests to their response headers (gateway wait,
    the pick, the hop to the node and its first event: all outside the engine's model) and then streaming; the
    non-streamed requests' whole latency; the gateway's own view (time through it, and to the node's first byte)."""
    def mean(xs: list[float]) -> float | None:
        return sum(xs) / len(xs) if xs else None

    ok = [o for o in outs if 200 <= o.status < 300 and o.headers_s is not None]
    streamed = [o for o in ok if o.stream]
    plain = [o for o in ok if not o.stream]
    d = {k: gw1.get(k, 0.0) - gw0.get(k, 0.0) for k in gw1}
    return {"client": mean([o.latency_s for o in ok]),
            "stream_headers": mean([o.headers_s for o in streamed]),
            "stream_body": mean([o.latency_s - o.headers_s for o in streamed]),
            "plain": mean([o.latency_s for o in plain]),
            "gateway_total": d["gw_total_sum"] / d["gw_total_count"] if d.get("gw_total_count") else None,
            "gateway_first": d["gw_first_sum"] / d["gw_first_count"] if d.get("gw_first_count") else None}


def engine_means(before: dict[str, dict[str, float]], after: dict[str, dict[str, float]],
                 url_profile: dict[str, str]) -> dict[str, dict[str, float]]:
    """Per profile, the engines' mean e2e latency, queue time and TTFT over a run (what the nodes themselves saw,
    against what the client saw: the difference is time spent outside the engines, e.g. a starved CPU)."""
    acc: dict[str, dict[str, float]] = {}
    for url, row in after.items():
        prof = url_profile.get(url, "?")
        a = acc.setdefault(prof, {})
        for k, v in row.items():
            a[k] = a.get(k, 0.0) + v - before.get(url, {}).get(k, 0.0)
    return {prof: {key: a[f"{key}_sum"] / a[f"{key}_count"] for key in ENGINE_FIGURES if a.get(f"{key}_count")}
            for prof, a in acc.items()}


# --- one configuration ------------------------------------------------------------------------------------------
def run_config(name: str, args: argparse.Namespace, gw: str, control: str, profiles: dict[str, str],
               urls: list[str], slo_s: float, rate: float | None = None, duration: float | None = None,
               label: str = "") -> dict[str, Any]:
    from control.loadgen import report

    rate = args.rate if rate is None else rate
    duration = args.duration if duration is None else duration
    label = label or name
    rev = activate(name)
    wait_for(f"the gateway to load revision {rev}", lambda: read_status(gw).policy.get("scheduler") == rev, 15)
    wait_idle(control, args.interval)  # same start for every configuration
    lag0 = engine_lag(urls)
    sums0 = engine_sums(urls)
    gw0 = gateway_sums(gw)
    fleet = getattr(args, "fleet", None)
    meter = CpuMeter(fleet) if fleet is not None else None
    # bench/prefix.py: a workload per run, its texts tagged by the run so that no run finds another's prompts cached.
    make = getattr(args, "workload_for", None)
    # Independent prompts are tagged by the run too: with one seed every configuration sends the same prompts, so
    # a later run found the earlier runs' prompts in the engines' prefix caches and, through prefix_affinity, the
    # default followed wherever round robin had sent each one (its affinity part reached 1.95 of 2 on "independent"
    # prompts). The tag is shorter than one cache block, so prompts of one run share no block either.
    workload, tag = make(label) if make else (None, f"<{label}> ")
    tracer = Tracer(getattr(args, "trace_id", "")) if getattr(args, "trace", False) and name == "switchyard" else None
    if tracer:
        tracer.start()
    if meter:
        meter.start()
    try:
        outs, wall = send(label, load_spec(gw, args, rate, duration, workload, tag), log)
    finally:
        if tracer:
            tracer.stop()
    cpu = meter.stop() if meter else None
    split = time_split(outs, gw0, gateway_sums(gw))
    row = report.row(label, outs, duration, slo_s)
    by_profile = Counter(profiles.get(o.node, "?") for o in outs if 200 <= o.status < 300)
    ok = max(1, row.ok)
    share = {p: by_profile.get(p, 0) / ok for p in ("h100", "a100", "l40s")}
    lag = engine_lag(urls) - lag0
    engines = engine_means(sums0, engine_sums(urls), getattr(args, "url_profile", {}))
    # Did a queue build up during the run? Median latency of the last quarter of the sends over the second quarter
    # (the first is the warm-up from idle): about 1 when the fleet keeps up, growing with the run when it does not.
    answered = sorted((o.sent_at, o.latency_s) for o in outs if 200 <= o.status < 300)
    q = len(answered) // 4
    growth = (report.quantile([x for _, x in answered[3 * q:]], 0.5) or 0.0) / max(
        1e-9, report.quantile([x for _, x in answered[q:2 * q]], 0.5) or 0.0) if q >= 10 else None
    result = {**row.as_dict(), "rate": rate, "growth": growth, "wall_s": wall, "revision": rev, "share": share,
              "engine_lag_s": lag, "per_node": dict(Counter(o.node for o in outs if 200 <= o.status < 300)),
              "timeouts": sum(1 for o in outs if o.error == "timeout"), "errors_seen": report.first_errors(outs),
              "engines": engines, "cpu": cpu, "split": split}
    lat, ttft = row.latency, row.ttft
    log(f"  {label:<16} done in {wall:.0f} s: {row.ok}/{row.sent} ok, p50/p95/p99 {fmt(lat[0])}/{fmt(lat[1])}/"
        f"{fmt(lat[2])}, TTFT p95 {fmt(ttft[1])}, goodput {row.goodput:.1f}/s, share h100/a100/l40s "
        f"{share['h100']:.0%}/{share['a100']:.0%}/{share['l40s']:.0%}, engine lag {lag:.1f} s")
    for err in result["errors_seen"]:
        log(f"    error: {err}")
    # Every request of the run, compact (the --json file): [sent at, profile, node, streamed, prompt tokens asked,
    # max_tokens, status, latency, TTFT].
    result["requests"] = [[round(o.sent_at, 3), profiles.get(o.node, "?"), o.node, o.stream, o.prompt_tokens,
                           o.max_tokens, o.status, round(o.latency_s, 3),
                           None if o.ttft_s is None else round(o.ttft_s, 3)] for o in outs]
    result["streamed"] = streamed_tail(outs, profiles)
    log(f"    {result['streamed']['line']}")
    client = {}
    for o in outs:
        if 200 <= o.status < 300:
            client.setdefault(profiles.get(o.node, "?"), []).append(o.latency_s)
    misses = {prof: sum(1 for x in xs if x > slo_s) for prof, xs in client.items()}
    result["slo_misses"] = misses
    log(f"    past the {slo_s:g}-s SLO, per profile (missed / served): " + ", ".join(
        f"{prof} {misses[prof]}/{len(client[prof])}" for prof in sorted(client)))
    log("    engines (mean e2e / queue / TTFT, model s) vs client mean latency: " + "; ".join(
        f"{prof} {e.get('e2e', 0):.2f} / {e.get('queue', 0):.2f} / {e.get('ttft', 0):.2f} vs "
        f"{sum(client.get(prof, [0])) / max(1, len(client.get(prof, []))):.2f}"
        for prof, e in sorted(engines.items())))
    if cpu:
        log(f"    {cpu_line(cpu)}")
    log("    client time (means): " + ", ".join(f"{k} {fmt(v)}" for k, v in split.items()))
    if tracer:
        result["trace"] = tracer.explain(outs, profiles)
        for line in result["trace"]["lines"]:
            log(f"    trace: {line}")
    return result


def streamed_tail(outs: list[Any], profiles: dict[str, str]) -> dict[str, Any]:
    """Where the streamed requests went and which nodes serve the fleet's TTFT tail (issue 14): per profile the
    share of the streamed requests, their TTFT p95, and how many of the requests at or above the fleet's TTFT p95
    it served."""
    from control.loadgen import report

    timed = [(profiles.get(o.node, "?"), o.ttft_s) for o in outs
             if 200 <= o.status < 300 and o.stream and o.ttft_s is not None]
    p95 = report.quantile([t for _, t in timed], 0.95)
    out: dict[str, Any] = {"requests": len(timed), "ttft_p95": p95, "per_profile": {}}
    parts = []
    for prof in ("h100", "a100", "l40s"):
        mine = [t for p, t in timed if p == prof]
        tail = sum(1 for t in mine if p95 is not None and t >= p95)
        q = report.quantile(mine, 0.95)
        out["per_profile"][prof] = {"share": len(mine) / max(1, len(timed)), "ttft_p95": q, "tail": tail}
        parts.append(f"{prof} {len(mine) / max(1, len(timed)):.0%} (TTFT p95 {fmt(q)}, {tail} in the tail)")
    out["line"] = f"streamed: {len(timed)} requests, TTFT p95 {fmt(p95)}; " + ", ".join(parts)
    return out


def calibrate(args: argparse.Namespace, gw: str, control: str, profiles: dict[str, str], urls: list[str],
              slo_s: float, saturation: float, unloaded_s: float) -> tuple[float, list[dict[str, Any]]]:
    """The highest probed rate at which least_in_flight stays stable, measured rather than computed.

    The computed saturation assumes every node runs a full batch all the time and that the routing gives each node
    exactly what it can serve; a real run (request sizes that vary, samples 5 s old, one machine's CPUs shared by the
    fleet, the gateway and the client) falls short of it. Past the real capacity queues grow for as long as the run
    lasts and every policy looks alike (tens of seconds of queue). So: least_in_flight, short runs at rising shares of
    the computed figure; a probe is stable when every request was answered, throughput kept up with the offered rate,
    no queue built up (median latency of the last quarter of the sends at most `--max-growth` times that of the
    second quarter) and p95 latency stayed within `--stable-x` times the slowest profile's unloaded latency. The
    bench runs at the highest stable probe."""
    steps = [float(x) for x in args.probe.split(",") if x.strip()]
    limit = args.stable_x * unloaded_s
    log(f"calibrating: least_in_flight for {args.probe_duration:g} s at {', '.join(f'{x:.0%}' for x in steps)} of "
        f"the computed saturation; stable = no errors, throughput >= 95 % of offered, no growing queue (median "
        f"latency last/second quarter <= {args.max_growth:g}), p95 <= {limit:.1f} s ({args.stable_x:g} x the "
        f"slowest profile's unloaded {unloaded_s:.1f} s)")
    chosen, probes = 0.0, []
    for share in steps:
        rate = round(share * saturation, 1)
        r = run_config("least_in_flight", args, gw, control, profiles, urls, slo_s, rate=rate,
                       duration=args.probe_duration, label=f"probe {share:.0%}")
        p95 = r["latency"]["p95"]
        errors = r["server_errors"] + r["client_errors"] + r["timeouts"]
        growth = r["growth"]
        stable = (errors == 0 and r["throughput"] >= 0.95 * rate and p95 is not None and p95 <= limit
                  and growth is not None and growth <= args.max_growth)
        probes.append({"share": share, "rate": rate, "p95": p95, "throughput": r["throughput"], "errors": errors,
                       "growth": growth, "stable": stable})
        log(f"  probe {share:.0%} = {rate:g} req/s: p95 {fmt(p95)}, throughput {r['throughput']:.1f} req/s, "
            f"{errors} errors, median latency last/second quarter {growth or 0:.2f} -> "
            f"{'stable' if stable else 'NOT stable'}")
        if not stable:
            break
        chosen = rate
    if not chosen:
        chosen = round(steps[0] * saturation, 1)
        log(f"no probe was stable; running at the lowest, {chosen:g} req/s")
    return chosen, probes


def sweep(args: argparse.Namespace, gw: str, control: str, profiles: dict[str, str], urls: list[str],
          slo_s: float) -> list[dict[str, Any]]:
    """Every sweep configuration at each share of the calibrated rate (`args.rate`)."""
    points = [float(x) for x in args.sweep_points.split(",") if x.strip()]
    out = []
    for share in points:
        rate = round(share * args.rate, 1)
        log(f"== {share:.0%} of least_in_flight's stable rate = {rate:g} req/s")
        row = {"share": share, "rate": rate, "results": {}}
        for name in SWEEP_CONFIGS:
            if name == "round_robin" and share >= LIGHT and not args.sweep_all:
                continue  # round robin is a target only at light load; past it, its run only costs bench time
            fleet = getattr(args, "fleet", None)
            if fleet is not None and fleet.gateway_starts:
                # A fresh gateway per run: the slot times and prefix index one policy's run taught it must not
                # decide the next policy's routing.
                fleet.restart_gateways()
            row["results"][name] = run_config(name, args, gw, control, profiles, urls, slo_s, rate=rate,
                                              label=f"{name} {share:.0%}")
        out.append(row)
    return out


def ratio(a: float | None, b: float | None) -> float | None:
    return None if a is None or not b else a / b


def sweep_report(points: list[dict[str, Any]], light: float = LIGHT) -> tuple[str, list[str], bool]:
    """The per-point table and the verdict lines (targets of issue 14). Round robin may be missing at the points
    from `light` up (it is not a target there): its columns then read '-'."""
    head = ("| load | req/s | p95 latency RR / LIF / SY | p95 TTFT RR / LIF / SY | goodput RR / LIF / SY | "
            "SY/LIF p95 lat | SY/LIF p95 TTFT | SY/LIF goodput | SY/RR p95 lat | SY/RR p95 TTFT |")
    lines = [head, "|" + " --- |" * 10]
    verdicts, ok_all = [], True

    def r2(x: float | None) -> str:
        return "-" if x is None else f"{x:.2f}"

    for p in points:
        rr, lif, sy = (p["results"].get(n) for n in SWEEP_CONFIGS)
        lat = [r["latency"]["p95"] if r else None for r in (rr, lif, sy)]
        ttft = [r["ttft"]["p95"] if r else None for r in (rr, lif, sy)]
        good = [r["goodput"] if r else None for r in (rr, lif, sy)]
        q_lat, q_ttft, q_good = ratio(lat[2], lat[1]), ratio(ttft[2], ttft[1]), ratio(good[2], good[1])
        rr_lat, rr_ttft = ratio(lat[2], lat[0]), ratio(ttft[2], ttft[0])
        lines.append(f"| {p['share']:.0%} | {p['rate']:g} | {' / '.join(fmt(x) for x in lat)} | "
                     f"{' / '.join(fmt(x) for x in ttft)} | {' / '.join('-' if x is None else f'{x:.1f}' for x in good)} | {r2(q_lat)} | "
                     f"{r2(q_ttft)} | {r2(q_good)} | {r2(rr_lat)} | {r2(rr_ttft)} |")
        misses = []
        if q_lat is None or q_lat > 0.85:
            misses.append(f"p95 latency {r2(q_lat)} x LIF > 0.85")
        if q_ttft is None or q_ttft > 0.85:
            misses.append(f"p95 TTFT {r2(q_ttft)} x LIF > 0.85")
        if q_good is None or q_good < 1.0:
            misses.append(f"goodput {r2(q_good)} x LIF < 1.0")
        if p["share"] < light:
            if rr_lat is None or rr_lat > 1.0:
                misses.append(f"p95 latency {r2(rr_lat)} x RR > 1.0")
            if rr_ttft is None or rr_ttft > 1.0:
                misses.append(f"p95 TTFT {r2(rr_ttft)} x RR > 1.0")
        ok_all = ok_all and not misses
        verdicts.append(f"{p['share']:.0%}: " + ("met" if not misses else "NOT met: " + "; ".join(misses)))
    verdicts.append("sweep verdict (p95 latency and TTFT <= 0.85 x least_in_flight, goodput >= 1.0 x, at every "
                    f"point; not worse than round_robin below {light:.0%}): {'MET' if ok_all else 'NOT met'}")
    return "\n".join(lines), verdicts, ok_all


def fmt(x: float | None) -> str:
    return "-" if x is None else f"{x:.2f} s"


def table(results: list[dict[str, Any]], slo_s: float) -> str:
    head = ("| policy | latency p50 | p95 | p99 | TTFT p50 | p95 | p99 | throughput | goodput (≤ "
            f"{slo_s:.1f} s) | 429 | errors | requests to h100 / a100 / l40s |")
    lines = [head, "|" + " --- |" * 12]
    for r in results:
        lat, ttft, share = r["latency"], r["ttft"], r["share"]
        errors = r["server_errors"] + r["client_errors"]
        lines.append(
            f"| {r['name']} | {fmt(lat['p50'])} | {fmt(lat['p95'])} | {fmt(lat['p99'])} | {fmt(ttft['p50'])} | "
            f"{fmt(ttft['p95'])} | {fmt(ttft['p99'])} | {r['throughput']:.1f} req/s | {r['goodput']:.1f} req/s | "
            f"{r['shed_429']} | {errors} | {share['h100']:.0%} / {share['a100']:.0%} / {share['l40s']:.0%} |")
    return "\n".join(lines)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--nodes", type=int, default=6, help="simulated nodes, profiles h100/a100/l40s in turn (default 6)")
    ap.add_argument("--duration", type=float, default=60.0, help="seconds of load per configuration (default 60)")
    ap.add_argument("--load", type=float, default=0.0,
                    help="rate as a share of the fleet's computed saturation rate (default: calibrate, see --probe)")
    ap.add_argument("--rate", type=float, default=0.0, help="req/s; overrides --load")
    ap.add_argument("--probe", default="0.65,0.75,0.85",
                    help="calibration (when neither --load nor --rate is given): shares of the computed saturation "
                         "probed with least_in_flight, in rising order (default %(default)s)")
    ap.add_argument("--probe-duration", type=float, default=20.0, help="seconds per probe (default 20)")
    ap.add_argument("--stable-x", type=float, default=3.0,
                    help="a probe is stable while least_in_flight's p95 stays within this many times the slowest "
                         "profile's unloaded latency (default 3)")
    ap.add_argument("--max-growth", type=float, default=1.3,
                    help="a probe is stable while the median latency of its last quarter of sends is at most this "
                         "many times that of its second quarter (default 1.3)")
    ap.add_argument("--seed", type=int, default=7, help="seed of the arrival sequence and the fleet (default 7)")
    ap.add_argument("--prompt-tokens", default="32:0.5,256:0.5", help="prompt length mix (default %(default)s)")
    ap.add_argument("--max-tokens", default="64:0.5,192:0.5",
                    help="answer length mix; every answer is exactly this long (default %(default)s)")
    ap.add_argument("--stream-fraction", type=float, default=0.3,
                    help="share of streamed requests (TTFT is measured on these) (default %(default)s)")
    ap.add_argument("--slo", type=float, default=0.0,
                    help="latency SLO for goodput, seconds (default: 1.5 x the slowest profile's unloaded latency "
                         "for the mean request)")
    ap.add_argument("--timeout", type=float, default=30.0,
                    help="client timeout per request (default 30 s: more than 2 x least_in_flight's p99 at the "
                         "calibrated load; only a policy whose queues run away reaches it)")
    ap.add_argument("--interval", type=int, default=5, help="agent push interval, seconds (default 5)")
    ap.add_argument("--configs", default=",".join(CONFIGS), help="which configurations, in order (default all)")
    ap.add_argument("--custom", action="append", default=[], metavar="NAME=FILE",
                    help="also run NAME with the scheduler document in FILE (JSON; its sections override the "
                         "default's); add NAME to --configs to order it, else it runs last")
    ap.add_argument("--sweep", action="store_true",
                    help="round_robin, least_in_flight and switchyard at each of --sweep-points x the calibrated (or "
                         "--rate) rate, with ratios and a verdict (issue 14)")
    ap.add_argument("--sweep-points", default="0.5,0.65,0.8,0.95,1.1",
                    help="--sweep: shares of least_in_flight's stable rate (default %(default)s)")
    ap.add_argument("--sweep-all", action="store_true",
                    help="--sweep: round_robin at every point too (by default only below "
                         f"{LIGHT * 100:.0f}%%, where it is a target)")
    ap.add_argument("--long", action="store_true", help=f"long prompts: --prompt-tokens {LONG_PROMPTS}")
    ap.add_argument("--trace", action="store_true",
                    help="during switchyard's runs, match each request with the expected_wait the gateway held for "
                         "its node when it was sent (printed per profile)")
    ap.add_argument("--no-policy-slo", action="store_true",
                    help="do not tell the scheduler policy the goodput SLO (slo.latency_s stays null: routing by "
                         "score alone, as before issue 14's SLO rule)")
    ap.add_argument("--slo-margin", type=float, default=0.0,
                    help="the policy's slo.margin (default: the policy's default)")
    ap.add_argument("--json", dest="json_path", default="", help="also write the results as JSON here")
    ap.add_argument("--database", default="sy_bench_routing", help="throw-away database (default %(default)s)")
    ap.add_argument("--redis-db", type=int, default=int(os.environ.get("TEST_REDIS_DB", "11")),
                    help="Redis db (default $TEST_REDIS_DB or 11)")
    args = ap.parse_args()
    if args.long:
        args.prompt_tokens = LONG_PROMPTS
    args.trace_id = "bench-routing"
    configs = [c.strip() for c in args.configs.split(",") if c.strip()]
    for item in args.custom:
        name, _, path = item.partition("=")
        CUSTOM[name] = json.loads(Path(path).read_text())
        if name not in configs:
            configs.append(name)
    if unknown := [c for c in configs if c not in (*CONFIGS, *CUSTOM)]:
        raise SystemExit(f"unknown configuration(s) {unknown}; choose from {', '.join(CONFIGS)}")

    db_url, redis_url = use_bench_database(args.database, args.redis_db)
    from agents.sim.profiles import MIXED, PROFILES
    from control.loadgen.mix import parse_mix

    prompt = mean_prompt_tokens(parse_mix(args.prompt_tokens, int, "--prompt-tokens", 1, 8000))
    out_mix = parse_mix(args.max_tokens, int, "--max-tokens", 1, 4096)
    out = sum(v * w for v, w in zip(out_mix.values, out_mix.weights, strict=True)) / sum(out_mix.weights)
    kinds = [MIXED[i % len(MIXED)] for i in range(args.nodes)]
    rates = {k: node_rate(PROFILES[k], prompt, out) for k in MIXED}
    saturation = sum(rates[k] for k in kinds)
    if not args.rate and args.load:
        args.rate = round(args.load * saturation, 1)
    unloaded_s = max(unloaded_latency(PROFILES[k], prompt, out) for k in set(kinds))
    slo_s = args.slo or round(1.5 * unloaded_s, 1)
    log(f"fleet: {args.nodes} nodes ({', '.join(f'{kinds.count(k)} {k}' for k in MIXED)}); mean request "
        f"{prompt:.0f} prompt + {out:.0f} answer tokens")
    log("saturation per node (full batch, from agents/sim/profiles.py): "
        + ", ".join(f"{k} {rates[k]:.1f} req/s" for k in MIXED) + f"; fleet {saturation:.1f} req/s")
    log("unloaded latency of the mean request: " + ", ".join(
        f"{k} {unloaded_latency(PROFILES[k], prompt, out):.2f} s" for k in MIXED))
    why = "" if args.slo else " (1.5 x the slowest profile's unloaded latency)"
    if not args.no_policy_slo:
        POLICY_SLO.append(slo_s)
        why += "; the default policy is told it (slo.latency_s)"
    if args.slo_margin:
        MARGIN.append(args.slo_margin)
    log(f"SLO for goodput {slo_s:g} s{why}; {args.duration:g} s per configuration, seed {args.seed}, "
        f"{args.stream_fraction:.0%} streamed")
    probes: list[dict[str, Any]] = []

    logs = Path(tempfile.mkdtemp(prefix="sy-bench-routing-"))
    with sim_fleet(args.nodes, args.seed, args.interval, db_url, redis_url, logs, "bench-routing") as fleet:
        gw, control, profiles, urls = fleet.gateway, fleet.control, fleet.profiles, fleet.urls
        args.url_profile = fleet.url_profile
        args.fleet = fleet
        log(f"gateway {gw}, fleet control {control}, logs in {logs}")
        if not args.rate:
            args.rate, probes = calibrate(args, gw, control, profiles, urls, slo_s, saturation, unloaded_s)
        log(f"offered: {args.rate:g} req/s ({args.rate / saturation:.0%} of the computed saturation)"
            + (" = the highest stable probe" if probes else ""))
        if args.sweep:
            points = sweep(args, gw, control, profiles, urls, slo_s)
        results = []
        for name in configs if not args.sweep else ():
            log(f"[{len(results) + 1}/{len(configs)}] {name}")
            results.append(run_config(name, args, gw, control, profiles, urls, slo_s))

    if args.sweep:
        text, verdicts, _ = sweep_report(points)
        print()
        print(text)
        print()
        for v in verdicts:
            print(v)
        lag = sum(r["engine_lag_s"] for p in points for r in p["results"].values())
        print(f"simulated engines fell behind their model by {lag:.1f} s in all (0 = the CPU kept up)")
        if args.json_path:
            Path(args.json_path).write_text(json.dumps(
                {"nodes": args.nodes, "profiles": kinds, "rate": args.rate, "saturation": saturation,
                 "probes": probes, "duration_s": args.duration, "seed": args.seed, "slo_s": slo_s,
                 "prompt_tokens": args.prompt_tokens, "max_tokens": args.max_tokens, "points": points,
                 "verdicts": verdicts}, indent=2, default=str))
        return

    print()
    print(table(results, slo_s))
    by = {r["name"]: r for r in results}
    verdicts = []
    if "switchyard" in by:
        sy = by["switchyard"]["latency"]["p95"]
        for base, target in (("round_robin", 0.5), ("least_in_flight", 0.85), ("classic", None)):
            if base in by and sy is not None and by[base]["latency"]["p95"]:
                ratio = sy / by[base]["latency"]["p95"]
                verdict = "" if target is None else f" (target <= {target}: {'met' if ratio <= target else 'NOT met'})"
                verdicts.append(f"switchyard p95 / {base} p95 = {ratio:.2f}{verdict}")
    print()
    for v in verdicts:
        print(v)
    lag = sum(r["engine_lag_s"] for r in results)
    print(f"simulated engines fell behind their model by {lag:.1f} s in all (0 = the CPU kept up)")
    if args.json_path:
        Path(args.json_path).write_text(json.dumps(
            {"nodes": args.nodes, "profiles": kinds, "rate": args.rate, "saturation": saturation, "probes": probes,
             "duration_s": args.duration, "seed": args.seed, "slo_s": slo_s, "prompt_tokens": args.prompt_tokens,
             "max_tokens": args.max_tokens, "stream_fraction": args.stream_fraction,
             "results": [copy.deepcopy(r) for r in results], "verdicts": verdicts}, indent=2))


if __name__ == "__main__":
    main()
