"""Cache-aware routing compared on the mixed simulated fleet (issue 14).

The fleet, gateway and calibration of bench/routing.py (bench/loadrun.py), whose simulated engines keep a prefix
cache inside their KV capacity (agents/sim/engine.py): a request whose leading 64-character blocks a node holds
skips their prefill. For each workload, each policy gets the same seeded arrival sequence with the same structure
(its texts tagged by the policy, so that no policy finds another's prompts cached):

    shared-prefix    groups x prompts sharing a system prompt (loadgen --workload shared-prefix)
    multi-turn       sessions resending a growing conversation (loadgen --workload multi-turn)
    independent      today's prompt mix, nothing shared: the scorer must cost nothing here

    round_robin      picker.strategy round_robin
    least_in_flight  picker.strategy least_in_flight
    default          the default scheduler policy without prefix affinity (today's)
    cache_aware      SGLang's router policy as a picker: longest prefix match when it covers cache_threshold 0.5 of
                     the prompt, else the node holding the least; the fewest in flight when imbalanced (32 / 1.1)
    prefix_affinity  the default policy plus the prefix_affinity scorer (--weight): the index holds what the
                     gateway sent to each node (approximate)
    precise          the same scorer with prefix.source kv_events: the nodes publish vLLM's KV-cache events
                     (simfleet --kv-events-config) and the index holds what each engine really caches; block_chars is
                     the simulator's block (64 characters). Not with --gateways 2 (one events address per fleet)

Every run starts from freshly started gateways (nothing learned in the run before). The rate of each workload is
the highest at which least_in_flight stays stable (bench/routing.py's calibration,
probing shares of the fleet's computed saturation with every prompt prefilled in full), unless `--rate` gives it.
The prefix-cache hit rate is the nodes' own count (vllm:prefix_cache_hits_total / queries_total over the run, in
tokens). TTFT is the client's (streamed requests) and, beside it, the engines' own (their
vllm:time_to_first_token_seconds histograms over the run, all requests, model time, interpolated in the buckets):
queueing and prefill, without the client's, the gateway's or this machine's scheduling delays, which at a few
milliseconds of TTFT are most of the client's p95. Targets: shared-prefix and multi-turn TTFT p95 <= 0.5 x default
and <= 0.8 x cache_aware, hit rate >= cache_aware's; independent p95 within 5 % of default.

    .venv/bin/python bench/prefix.py [--workloads shared-prefix,multi-turn,independent] [--duration 30]
        [--rate shared-prefix=R,...] [--weight 2] [--gateways 2] [--json out.json]

Approximate against precise where it matters, KV capacity pressure (more groups' system prompts than the nodes'
caches hold, so the nodes evict prefixes the approximate index still believes in):

    .venv/bin/python bench/prefix.py --workloads shared-prefix --policies prefix_affinity,precise --block-chars 64 \\
        --groups 96 --system-tokens 4096

`--gateways 2`: each policy runs twice, through one gateway and spread in turn over two (as a round-robin load
balancer would; each gateway keeps its own prefix index and sees only its half of the traffic, a multi-turn
session's turns alternate between them), with the same seeded sequence; the verdicts then compare the two.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench import routing  # noqa: E402
from bench.benchlib import use_bench_database  # noqa: E402
from bench.loadrun import sim_fleet  # noqa: E402
from control.scheduler.status import read_status  # noqa: E402

POLICIES = ("round_robin", "least_in_flight", "default", "cache_aware", "prefix_affinity", "precise")
SIM_BLOCK_CHARS = 64  # agents/sim/engine.py PREFIX_BLOCK_CHARS: precise mode keys the engines' own blocks
WORKLOADS = ("shared-prefix", "multi-turn", "independent")
log = routing.log


def policies(weight: float, block_chars: int) -> None:
    """The configurations beyond bench/routing.py's own, as partial scheduler documents. `default` is the default
    policy without prefix affinity (today's before it), whatever the default document's weight is."""
    from control.policy.defaults import default_document

    base = [s for s in default_document("scheduler")["scorers"] if s["metric"] != "prefix_affinity"]
    prefix = {**default_document("scheduler")["prefix"], **({"block_chars": block_chars} if block_chars else {})}
    routing.CUSTOM["default"] = {"scorers": [*base, {"metric": "prefix_affinity", "weight": 0.0, "invert": False}]}
    routing.CUSTOM["cache_aware"] = {"scorers": routing.CUSTOM["default"]["scorers"],
                                     "picker": {"strategy": "cache_aware"}, "prefix": prefix}
    routing.CUSTOM["prefix_affinity"] = {
        "scorers": [*base, {"metric": "prefix_affinity", "weight": weight, "invert": False}], "prefix": prefix}
    routing.CUSTOM["precise"] = {
        "scorers": routing.CUSTOM["prefix_affinity"]["scorers"],
        "prefix": {**prefix, "block_chars": SIM_BLOCK_CHARS, "source": "kv_events"}}


def kv_events_env() -> None:
    """The simulated nodes publish their KV-cache events to the gateway, which binds a free local port (both read
    it from the environment the fleet and the gateways are started with)."""
    from bench.benchlib import free_port

    endpoint = f"tcp://127.0.0.1:{free_port()}"
    os.environ["SWITCHYARD_GATEWAY_KV_EVENTS"] = endpoint
    os.environ["SWITCHYARD_SIM_KV_EVENTS_CONFIG"] = json.dumps(
        {"enable_kv_cache_events": True, "publisher": "zmq", "endpoint": endpoint})


def workload(name: str, args: argparse.Namespace, tag: str) -> Any:
    from control.loadgen import workloads

    if name == "shared-prefix":
        return workloads.SharedPrefix(groups=args.groups, prompts_per_group=args.prompts_per_group,
                                      system_tokens=args.system_tokens, question_tokens=args.question_tokens,
                                      answer_tokens=args.answer_tokens, tag=tag)
    if name == "multi-turn":
        return workloads.MultiTurn(turns=args.turns, context_tokens=args.context_tokens, turn_tokens=args.turn_tokens,
                                   answer_tokens=args.answer_tokens, think_s=args.think_s, tag=tag)
    return None


def request_size(name: str, args: argparse.Namespace) -> tuple[float, float]:
    """(mean prompt tokens as the simulator counts them, answer tokens) of the workload."""
    from agents.sim.text import chat_prompt_tokens
    from control.loadgen.mix import parse_mix
    from control.loadgen.workloads import plan

    w = workload(name, args, "")
    if w is None:
        out_mix = parse_mix(args.max_tokens, int, "--max-tokens", 1, 4096)
        out = sum(v * wt for v, wt in zip(out_mix.values, out_mix.weights, strict=True)) / sum(out_mix.weights)
        return routing.mean_prompt_tokens(parse_mix(args.prompt_tokens, int, "--prompt-tokens", 1, 8000)), out
    planned = plan(w, [i * 0.01 for i in range(200)], 0, 1e9)
    return sum(chat_prompt_tokens(p.messages) for p in planned) / len(planned), float(args.answer_tokens)


def scrape(urls: list[str]) -> tuple[float, float, dict[float, float]]:
    """(hit tokens, queried tokens, TTFT histogram as upper bound -> cumulative count), summed over the nodes'
    counters (the engines' own, in model time: what routing changes, without the client's, the gateway's or this
    machine's scheduling delays)."""
    import httpx

    from agents.collectors.inference import parse_prometheus

    h = q = 0.0
    ttft: dict[float, float] = {}
    for url in urls:
        fams = parse_prometheus(httpx.get(f"{url}/metrics", timeout=5).text)
        h += sum(v for _, v in fams.get("vllm:prefix_cache_hits_total", []))
        q += sum(v for _, v in fams.get("vllm:prefix_cache_queries_total", []))
        for labels, v in fams.get("vllm:time_to_first_token_seconds_bucket", []):
            le = float(labels.get("le", "inf"))
            ttft[le] = ttft.get(le, 0.0) + v
    return h, q, ttft


def histogram_quantile(before: dict[float, float], after: dict[float, float], q: float) -> float | None:
    """The q-quantile of the observations between two scrapes of a cumulative histogram, interpolated linearly
    inside its bucket (as Prometheus' histogram_quantile)."""
    bounds = sorted(after)
    counts = [after[b] - before.get(b, 0.0) for b in bounds]
    if not counts or counts[-1] <= 0:
        return None
    rank = q * counts[-1]
    lower, below = 0.0, 0.0
    for bound, count in zip(bounds, counts, strict=True):
        if count >= rank:
            if bound == float("inf"):
                return lower
            return lower + (bound - lower) * (rank - below) / max(1e-12, count - below)
        lower, below = bound, count
    return lower


def fmt(x: float | None) -> str:
    return "-" if x is None else f"{x:.2f}"


def fmt3(x: float | None) -> str:
    return "-" if x is None else f"{x:.3f}"


def table(rows: list[dict[str, Any]], nodes: list[str]) -> str:
    head = ("| workload | policy | TTFT p50 / p95 / p99 s | engine TTFT p50 / p95 s | latency p50 / p95 s | "
            "throughput | goodput | hit rate | requests per node | largest share |")
    lines = [head, "|" + " --- |" * 10]
    for r in rows:
        t, lat = r["ttft"], r["latency"]
        per = " / ".join(str(r["per_node"].get(n, 0)) for n in nodes)
        e = r["engine_ttft"]
        lines.append(f"| {r['workload']} | {r['name']} | {fmt(t['p50'])} / {fmt(t['p95'])} / {fmt(t['p99'])} | "
                     f"{fmt3(e['p50'])} / {fmt3(e['p95'])} | {fmt(lat['p50'])} / {fmt(lat['p95'])} | {r['throughput']:.1f}/s | {r['goodput']:.1f}/s | "
                     f"{r['hit_rate']:.0%} | {per} | {r['largest_share']:.0%} |")
    return "\n".join(lines)


def verdicts(rows: list[dict[str, Any]]) -> list[str]:
    out = []
    for wl in WORKLOADS:
        by = {r["name"]: r for r in rows if r["workload"] == wl}
        pa = by.get("prefix_affinity")
        if pa is None:
            continue

        def ratio(metric: str, base: str, pa: dict[str, Any] = pa, by: dict[str, Any] = by) -> float | None:
            a, b = pa[metric]["p95"], by[base][metric]["p95"] if base in by else None
            return a / b if a is not None and b else None

        if wl == "independent":
            r = ratio("latency", "default")
            if r is not None:
                out.append(f"independent: prefix_affinity p95 / default p95 = {r:.2f} (target <= 1.05: "
                           f"{'met' if r <= 1.05 else 'NOT met'})")
            continue
        for base, target in (("default", 0.5), ("cache_aware", 0.8), ("least_in_flight", None)):
            for metric, what in (("ttft", "TTFT p95"), ("engine_ttft", "engine-side TTFT p95")):
                r = ratio(metric, base)
                if r is not None:
                    verdict = "" if target is None else f" (target <= {target}: {'met' if r <= target else 'NOT met'})"
                    out.append(f"{wl}: prefix_affinity {what} / {base} = {r:.2f}{verdict}")
        if "cache_aware" in by:
            ok = pa["hit_rate"] >= by["cache_aware"]["hit_rate"]
            out.append(f"{wl}: hit rate prefix_affinity {pa['hit_rate']:.0%} vs cache_aware "
                       f"{by['cache_aware']['hit_rate']:.0%} (target >=: {'met' if ok else 'NOT met'})")
    return out


def kv_events_state(gateway_id: str) -> dict[str, Any]:
    """The gateway's kv_events section of its published state (what the events did): a precise run whose events
    did not arrive would otherwise look like an approximate one."""
    import orjson

    from control.scheduler.sync import STATE_KEY
    from dashboard.metrics.latest import redis_client

    raw = redis_client().get(STATE_KEY.format(gateway_id))
    return (orjson.loads(raw).get("kv_events") or {}) if raw else {}


def _ratio(a_row: dict[str, Any], b_row: dict[str, Any], metric: str, q: str) -> str:
    """a's quantile over b's, as printed in the verdict lines ('-' when either is missing)."""
    a, b = a_row[metric][q], b_row[metric][q]
    return f"{a / b:.2f}" if a is not None and b else "-"


def precise_verdicts(rows: list[dict[str, Any]]) -> list[str]:
    """Precise (the nodes' KV events) against approximate (what the gateway sent), same-run ratios."""
    out = []
    for wl in WORKLOADS:
        by = {r["name"]: r for r in rows if r["workload"] == wl}
        pr, ap = by.get("precise"), by.get("prefix_affinity")
        if pr is None or ap is None:
            continue
        out.append(f"{wl}: precise vs approximate (prefix_affinity): hit rate {pr['hit_rate']:.0%} vs "
                   f"{ap['hit_rate']:.0%}, TTFT p50 x{_ratio(pr, ap, 'ttft', 'p50')}, p95 x{_ratio(pr, ap, 'ttft', 'p95')}, "
                   f"engine TTFT p50 x{_ratio(pr, ap, 'engine_ttft', 'p50')}, p95 x{_ratio(pr, ap, 'engine_ttft', 'p95')}, "
                   f"latency p95 x{_ratio(pr, ap, 'latency', 'p95')}, goodput {pr['goodput']:.1f} vs {ap['goodput']:.1f}/s")
    return out


def gateway_verdicts(rows: list[dict[str, Any]], k: int) -> list[str]:
    """What k gateways (each with its own index, requests spread over them in turn) cost against one, per policy."""
    out = []
    for wl in WORKLOADS:
        by = {r["name"]: r for r in rows if r["workload"] == wl}
        for name in POLICIES:
            one, split = by.get(name), by.get(f"{name} x{k}gw")
            if one is None or split is None:
                continue
            out.append(f"{wl}: {name} on {k} gateways vs 1: hit rate {split['hit_rate']:.0%} vs {one['hit_rate']:.0%}, "
                       f"TTFT p50 x{_ratio(split, one, 'ttft', 'p50')}, p95 x{_ratio(split, one, 'ttft', 'p95')}, "
                       f"latency p95 x{_ratio(split, one, 'latency', 'p95')}, goodput {split['goodput']:.1f} vs "
                       f"{one['goodput']:.1f}/s")
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--nodes", type=int, default=6, help="simulated nodes, h100/a100/l40s in turn (default 6)")
    ap.add_argument("--duration", type=float, default=30.0, help="seconds of load per policy (default 30)")
    ap.add_argument("--workloads", default=",".join(WORKLOADS), help="which, in order (default all)")
    ap.add_argument("--policies", default=",".join(POLICIES), help="which, in order (default all)")
    ap.add_argument("--weight", type=float, default=2.0, help="prefix_affinity weight (default %(default)s)")
    ap.add_argument("--block-chars", type=int, default=0,
                    help="prefix.block_chars of the cache-aware policies (default: the default policy's)")
    ap.add_argument("--rate", default="", help="workload=req/s,...: skip the calibration of those workloads")
    ap.add_argument("--probe", default="0.65,0.8,0.95", help="calibration: shares of the computed saturation "
                                                             "probed with least_in_flight (default %(default)s)")
    ap.add_argument("--probe-duration", type=float, default=15.0, help="seconds per probe (default 15)")
    ap.add_argument("--stable-x", type=float, default=3.0, help="as bench/routing.py (default 3)")
    ap.add_argument("--max-growth", type=float, default=1.3, help="as bench/routing.py (default 1.3)")
    ap.add_argument("--seed", type=int, default=7, help="seed of the arrivals, the texts and the fleet (default 7)")
    ap.add_argument("--groups", type=int, default=24, help="shared-prefix groups (default %(default)s)")
    ap.add_argument("--prompts-per-group", type=int, default=16, help="(default %(default)s)")
    ap.add_argument("--system-tokens", type=int, default=2048, help="(default %(default)s)")
    ap.add_argument("--question-tokens", type=int, default=128, help="(default %(default)s)")
    ap.add_argument("--answer-tokens", type=int, default=64, help="shared-prefix / multi-turn (default %(default)s)")
    ap.add_argument("--turns", type=int, default=4, help="multi-turn turns per session (default %(default)s)")
    ap.add_argument("--context-tokens", type=int, default=1536, help="multi-turn opening context (default %(default)s)")
    ap.add_argument("--turn-tokens", type=int, default=128, help="(default %(default)s)")
    ap.add_argument("--think-s", type=float, default=2.0, help="multi-turn mean think time (default %(default)s)")
    ap.add_argument("--prompt-tokens", default="32:0.5,256:0.5", help="independent: prompt mix (as bench/routing.py)")
    ap.add_argument("--max-tokens", default="64:0.5,192:0.5", help="independent: answer mix (as bench/routing.py)")
    ap.add_argument("--stream-fraction", type=float, default=0.5, help="streamed share (TTFT) (default 0.5)")
    ap.add_argument("--timeout", type=float, default=30.0, help="client timeout per request (default 30 s)")
    ap.add_argument("--interval", type=int, default=5, help="agent push interval (default 5)")
    ap.add_argument("--gateways", type=int, default=1,
                    help="with 2 or more: each policy also runs with its requests spread in turn over that many "
                         "gateways (each keeps its own prefix index), beside the same run through one (default 1)")
    ap.add_argument("--json", dest="json_path", default="", help="also write the results as JSON here")
    ap.add_argument("--database", default="sy_bench_prefix", help="throw-away database (default %(default)s)")
    ap.add_argument("--redis-db", type=int, default=int(os.environ.get("TEST_REDIS_DB", "11")),
                    help="Redis db (default $TEST_REDIS_DB or 11)")
    args = ap.parse_args()
    wls = [w.strip() for w in args.workloads.split(",") if w.strip()]
    pols = [p.strip() for p in args.policies.split(",") if p.strip()]
    if bad := [w for w in wls if w not in WORKLOADS] + [p for p in pols if p not in POLICIES]:
        raise SystemExit(f"unknown workload(s) or policy(ies): {bad}")
    rates = {k: float(v) for k, _, v in (item.partition("=") for item in args.rate.split(",") if item)}
    policies(args.weight, args.block_chars)

    db_url, redis_url = use_bench_database(args.database, args.redis_db)
    from agents.sim.profiles import MIXED, PROFILES

    kinds = [MIXED[i % len(MIXED)] for i in range(args.nodes)]
    logs = Path(tempfile.mkdtemp(prefix="sy-bench-prefix-"))
    rows: list[dict[str, Any]] = []
    calibration: dict[str, Any] = {}
    if args.gateways < 1:
        raise SystemExit("--gateways: at least 1")
    if "precise" in pols:
        if args.gateways > 1:
            raise SystemExit("--policies precise: not with --gateways 2 (the nodes publish to one gateway's address)")
        kv_events_env()
    with sim_fleet(args.nodes, args.seed, args.interval, db_url, redis_url, logs, "bench-prefix",
                   args.gateways) as fleet:
        gw, control, urls = fleet.gateway, fleet.control, fleet.urls
        names = sorted(fleet.profiles)
        log(f"fleet: {', '.join(f'{n} {fleet.profiles[n]}' for n in names)}; gateway {gw}; logs in {logs}")
        for wl in wls:
            prompt, out = request_size(wl, args)
            saturation = sum(routing.node_rate(PROFILES[k], prompt, out) for k in kinds)
            unloaded_s = max(routing.unloaded_latency(PROFILES[k], prompt, out) for k in set(kinds))
            slo_s = round(1.5 * unloaded_s, 1)
            counter = {"n": 0}

            def workload_for(label: str, wl: str = wl, counter: dict[str, int] = counter) -> tuple[Any, str]:
                counter["n"] += 1
                tag = f"<{label} {counter['n']}> "
                return workload(wl, args, tag), tag

            args.workload_for = workload_for
            log(f"== {wl}: mean request {prompt:.0f} prompt + {out:.0f} answer tokens; computed saturation (all "
                f"prefilled) {saturation:.1f} req/s; SLO for goodput {slo_s:g} s")
            rate = rates.get(wl)
            if rate is None:
                rate, probes = routing.calibrate(args, gw, control, fleet.profiles, urls, slo_s, saturation,
                                                 unloaded_s)
                calibration[wl] = probes
            log(f"{wl}: {rate:g} req/s, {args.duration:g} s per policy")
            args.rate = rate
            for name in pols:
                for k in (1, args.gateways) if args.gateways > 1 else (1,):
                    # The others get the policy by the same publish as the first (run_config waits for the first
                    # to load it, then for an idle fleet: seconds); checked after the run.
                    args.more_gateways = fleet.gateways[1:k]
                    label = name if k == 1 else f"{name} x{k}gw"
                    # Every run starts from fresh gateways: what one learned (per-node seconds per slot for
                    # expected_wait, TTFT, its prefix index) made a policy's result depend on the one before it
                    # (independent prompts: prefix_affinity p95 0.91x default right after it, 3.5x after an
                    # overloaded cache_aware run).
                    fleet.restart_gateways()
                    h0, q0, t0 = scrape(urls)
                    r = routing.run_config(name, args, gw, control, fleet.profiles, urls, slo_s, label=label)
                    h1, q1, t1 = scrape(urls)
                    r["engine_ttft"] = {"p50": histogram_quantile(t0, t1, 0.5), "p95": histogram_quantile(t0, t1, 0.95)}
                    for other in args.more_gateways:
                        if (rev := read_status(other).policy.get("scheduler")) != r["revision"]:
                            raise SystemExit(f"gateway {other} ran revision {rev}, not {r['revision']}")
                    ok = max(1, r["ok"])
                    r.update(workload=wl, name=label, gateways=k, hit_rate=(h1 - h0) / max(1.0, q1 - q0),
                             largest_share=max(r["per_node"].values(), default=0) / ok, slo_s=slo_s)
                    log(f"  {label:<16} hit rate {r['hit_rate']:.0%}, largest node share {r['largest_share']:.0%}")
                    if name == "precise":
                        kv = r["kv_events"] = kv_events_state("bench-prefix")
                        log(f"  precise: events {kv.get('counts')}, event-fed nodes {len(kv.get('event_fed', []))}")
                        if not kv.get("counts", {}).get("stored"):
                            raise SystemExit("precise: the gateway applied no KV event (see its log)")
                    rows.append(r)
            args.more_gateways = []
    print()
    print("requests per node in the order " + " / ".join(f"{n} ({fleet.profiles[n]})" for n in names))
    print(table(rows, names))
    print()
    found = verdicts([r for r in rows if r["gateways"] == 1]) + precise_verdicts(rows)
    if args.gateways > 1:
        found += gateway_verdicts(rows, args.gateways)
    for v in found:
        print(v)
    if args.json_path:
        Path(args.json_path).write_text(json.dumps(
            {"nodes": names, "profiles": fleet.profiles, "duration_s": args.duration, "seed": args.seed,
             "weight": args.weight, "gateways": args.gateways, "calibration": calibration, "results": rows, "verdicts": found}, indent=2,
            default=str))


if __name__ == "__main__":
    main()
