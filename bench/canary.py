"""Canary rollout of a scheduler policy on the simulated mixed fleet at a steady load (issue 16).

One `manage.py simfleet --profile mixed` whose agents push to a `manage.py serve`, one `manage.py gateway --auth off`
in front of it, the same seeded open-loop Poisson load as bench/routing.py. The controller's canary analysis
(`control.canary.analysis.tick`, what the Celery beat task runs every 5 s) runs here every second on a thread.
Phases, each `--duration` seconds of load; in bad and good the canary starts `--lead` seconds in, so the stable
policy alone runs first at the same load (what the analysis's latency_against=before and the 1.2 x target compare
with):

    bad        stable = today's default; canary = the classic formula without burst correction (bench/routing.py's
               `classic`), steps 5 % -> 25 % -> 50 % (--steps). Target: aborted before it served 10 % of the requests, and the
               whole client p95 during the rollout within 1.2 x the stable policy alone's
    good       stable = the classic formula; canary = today's default. Target: promoted with no manual step
    baseline   (optional) the stable policy alone for the whole phase

Printed per analysis run: each arm's, the whole's and the stable-alone figures of its window and the verdict; per
phase: time to verdict (from the canary's start), requests served by each arm (from the request log), p95 latency
of each arm, of the whole during the rollout and of the stable policy alone before it (the client's view).

    .venv/bin/python bench/canary.py [--nodes 6] [--duration 480] [--lead 150] [--load 0.75] [--steps 5:120,25:60,50:60]
        [--against switchback] [--switchback 10] [--switchback-periods 4] [--early-settle 10] [--seed 7]
        [--trace DIR] [--failure-limit 1]
"""

from __future__ import annotations

import argparse
import asyncio
import os
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench.benchlib import ROOT, free_port, start_server, stop, use_bench_database, wait_port  # noqa: E402
from bench.routing import (  # noqa: E402
    MODEL,
    get_json,
    mean_prompt_tokens,
    node_rate,
    policy,
    unloaded_latency,
    wait_for,
)
from control.scheduler.status import read_status  # noqa: E402

POOL = "routing"  # bench/routing.py's simfleet pool name is what its helpers expect
GATEWAY_ID = "bench-canary"


def log(msg: str) -> None:
    print(msg, flush=True)


def activate(name: str) -> int:
    from control.policy import service
    from core.audit.context import Origin

    current = service.active("scheduler")
    doc = policy(name)
    if current.document == doc:
        return int(current.pk)
    return int(service.create_revision("scheduler", doc, f"bench/canary.py: stable {name}", current.pk,
                                       Origin.system("bench-canary")).revision.pk)


def store(name: str) -> int:
    from control.policy import service
    from core.audit.context import Origin

    current = service.active("scheduler")
    return int(service.create_revision("scheduler", policy(name), f"bench/canary.py: candidate {name}", current.pk,
                                       Origin.system("bench-canary"), activate=False).revision.pk)


class Analyst(threading.Thread):
    """Starts the canary `lead` seconds into the load (an operator starting one during steady traffic: the stable
    policy alone before it is what latency_against=before compares with), then the controller's canary loop every
    second, until stopped."""

    def __init__(self, begin: Any = None, lead: float = 0.0) -> None:
        super().__init__(daemon=True)
        self.stop = threading.Event()
        self.lines: list[tuple[float, str]] = []
        self.begin, self.lead = begin, lead
        self.canary: Any = None
        self.started_at: float | None = None

    def run(self) -> None:
        from django.db import connection

        from control.canary import analysis
        from control.canary.models import AnalysisRun

        seen = AnalysisRun.objects.order_by("-pk").values_list("pk", flat=True).first() or 0
        try:
            if self.begin is not None:
                if self.stop.wait(self.lead):
                    return
                self.started_at = time.time()
                self.canary = self.begin()
            while not self.stop.wait(1.0):
                for line in analysis.tick():
                    self.lines.append((time.time(), line))
                    log(f"    controller: {line}")
                for run in AnalysisRun.objects.filter(pk__gt=seen).order_by("pk"):
                    seen = run.pk
                    log("    " + describe(run))
        finally:
            connection.close()


class Probe(threading.Thread):
    """--trace: the gateway's responsiveness (a GET /healthz every 0.25 s, its round trip) and its waiting-queue
    and in-flight counts (its state key, every second), to tell a stalled event loop or a queue held across
    switchback periods from the fleet's own dynamics."""

    def __init__(self, gw: str, gw_id: str) -> None:
        super().__init__(daemon=True)
        self.gw, self.gw_id = gw, gw_id
        self.stop = threading.Event()
        self.rtt: list[tuple[float, float]] = []  # (unix time sent, seconds to the answer; -1: no answer)
        self.state: list[tuple[float, dict[str, int], int]] = []  # (unix time, waiting per class, in flight)

    def run(self) -> None:
        import httpx
        import orjson

        from control.scheduler.sync import STATE_KEY
        from dashboard.metrics.latest import redis_client

        r = redis_client()
        last_state = 0.0
        with httpx.Client(base_url=self.gw, timeout=10.0) as client:
            while not self.stop.wait(0.25):
                t = time.time()
                try:
                    client.get("/healthz")
                    self.rtt.append((t, time.time() - t))
                except httpx.HTTPError:
                    self.rtt.append((t, -1.0))
                if t - last_state >= 1.0:
                    last_state = t
                    raw = r.get(STATE_KEY.format(self.gw_id))
                    if raw:
                        doc = orjson.loads(raw)
                        self.state.append((float(doc["ts"]), doc.get("queues", {}),
                                           sum(n.get("in_flight", 0) for n in doc.get("nodes", []))))


def write_trace(path: Path, c: Any, t0: float, outs: list[Any], probe: Probe) -> None:
    """--trace: every request as the client saw it (absolute send time) and as the gateway logged it (arrival
    stamp, arm, latency, and when the entry reached the log), with the probe's series and the canary's schedule."""
    import orjson

    from control.routing import reqlog
    from dashboard.metrics.latest import redis_client

    gateway: list[list[Any]] = []
    if c is not None:
        wanted = str(c.pk).encode()
        low = "-"
        r = redis_client()
        while True:
            batch = r.xrange(reqlog.STREAM, min=low, max="+", count=5000)
            for eid, fields in batch:
                if fields.get(b"canary") != wanted:
                    continue
                e = reqlog.parse(eid, fields)
                gateway.append([e.ts, e.arm, e.latency_ms, e.status, int(eid.split(b"-")[0]) / 1000, e.ttft_ms])
            if len(batch) < 5000:
                break
            low = "(" + batch[-1][0].decode()
    doc = {
        "canary": None if c is None else {"id": c.pk, "anchor": c.created.timestamp(), "analysis": c.analysis,
                                          "state": c.state, "steps": c.steps,
                                          "finished": c.finished.timestamp() if c.finished else None},
        "client": [[t0 + o.sent_at, o.latency_s, o.status, o.headers_s, o.stream, o.error[:40]] for o in outs],
        "gateway": gateway, "rtt": probe.rtt, "state": probe.state,
        "runs": [] if c is None else [[r.ts.timestamp(), r.step, r.weight, r.verdict, r.summary]
                                      for r in c.runs.order_by("pk")],
    }
    path.parent.mkdir(parents=True, exist_ok=True)  # --trace DIR need not exist: a phase's figures must not be lost to it
    path.write_bytes(orjson.dumps(doc))
    log(f"  trace: {path}")


def describe(run: Any) -> str:
    """One analysis run's numbers: what each arm looked like in its window and why the verdict."""
    def arm(f: dict[str, Any] | None) -> str:
        if f is None:
            return "-"
        lat, ttft, good = f["p95_latency_ms"], f.get("p95_ttft_ms"), f.get("goodput")
        return (f"n={f['requests']} p95={'-' if lat is None else f'{lat / 1000:.2f}s'} "
                f"ttft95={'-' if ttft is None else f'{ttft / 1000:.2f}s'} "
                f"good={'-' if good is None else f'{good:.2f}'}"
                + (f" open={f['open']} p95<={fmt_ms(f.get('p95_latency_ms_high'))}" if f.get("open") is not None else ""))

    span = (run.window_to - run.window_from).total_seconds()
    return (f"run step {run.step} @{run.weight:g}% window {span:.0f}s ending {(run.ts - run.window_to).total_seconds():.0f}s "
            f"ago: stable [{arm(run.arms['stable'])}] canary [{arm(run.arms['canary'])}] whole "
            f"[{arm(run.arms.get('whole'))}] before [{arm(run.arms.get('before'))}] off [{arm(run.arms.get('off'))}] "
            f"-> {run.verdict}: {run.summary}" + periods(run.arms.get("periods")))


def periods(p: dict[str, Any] | None) -> str:
    """The switchback periods of a run's window: p95 latency (s) and goodput of each, on and off."""
    if not p:
        return ""

    def one(f: dict[str, Any]) -> str:
        lat = f.get("p95_latency_ms", f.get("p95_latency_ms_low"))
        good = f.get("goodput")
        return f"{'-' if lat is None else f'{lat / 1000:.1f}'}/{'-' if good is None else f'{good:.2f}'}"

    return (" | periods p95 s/good: on " + " ".join(one(f) for f in p["on"]) + "; off "
            + " ".join(one(f) for f in p["off"]))


def fmt_ms(x: float | None) -> str:
    return "unbounded" if x is None else f"{x / 1000:.2f}s"


def duration(args: argparse.Namespace, label: str) -> float:
    """Seconds of load in phase `label`: --bad-duration for the bad phase when given (its verdict comes early)."""
    return args.bad_duration if label == "bad" and args.bad_duration > 0 else args.duration


def load(args: argparse.Namespace, gw: str, rate: float, label: str) -> tuple[list[Any], float]:
    from control.loadgen import curves, runner
    from control.loadgen.mix import parse_mix

    spec = runner.LoadSpec(
        url=gw, model=MODEL, curve=curves.build(curves.CurveSpec(kind="constant", rate=rate)),
        duration_s=duration(args, label), prompt_tokens=parse_mix(args.prompt_tokens, int, "--prompt-tokens", 1, 8000),
        max_tokens=parse_mix(args.max_tokens, int, "--max-tokens", 1, 4096), classes=parse_mix("standard", str, "x"),
        stream_fraction=args.stream_fraction, temperature=0.7, timeout_s=args.timeout, seed=args.seed,
        extra_body={"ignore_eos": True})
    marks = {"next": 20.0}

    def progress(elapsed: float, sent: int) -> None:
        if elapsed >= marks["next"]:
            marks["next"] += 20.0
            log(f"  {label:<9} {elapsed:>4.0f} s  {sent:>6} sent")

    t0 = time.time()
    return asyncio.run(runner.run(spec, progress)), t0


def p95(values: list[float]) -> float | None:
    from control.loadgen.report import quantile

    return quantile(values, 0.95)


def fmt(x: float | None) -> str:
    return "-" if x is None else f"{x:.2f} s"


def idle(control: str, interval: int) -> None:
    wait_for("the fleet to go idle", lambda: all(n["running"] == 0 and n["waiting"] == 0
                                                 for n in get_json(f"{control}/nodes")["nodes"]), 180, 1.0)
    time.sleep(interval + 1.5)


def phase(args: argparse.Namespace, gw: str, control: str, rate: float, stable: str, candidate: str | None,
          label: str) -> dict[str, Any]:
    from control.canary import analysis
    from control.canary import service as canary
    from control.canary.models import Canary
    from core.audit.context import Origin

    rev = activate(stable)
    wait_for(f"the gateway to load revision {rev}", lambda: read_status(gw).policy.get("scheduler") == rev, 15)
    idle(control, args.interval)
    begin = None
    if candidate is not None:
        steps = [{"weight": float(w), "pause_s": int(p)} for w, p in (x.split(":") for x in args.steps.split(","))]
        candidate_rev = store(candidate)

        def begin() -> Any:
            c = canary.start("scheduler", {
                "revision": candidate_rev, "steps": steps, "reason": f"bench: {candidate} on {stable}",
                "analysis": {"interval_s": args.analysis_interval, "window_s": args.window,
                             "min_requests": args.min_requests, "failure_limit": args.failure_limit,
                             "initial_delay_s": args.initial_delay, "settle_s": args.settle,
                             "baseline_s": args.baseline, "latency_against": args.against,
                             "switchback_s": args.switchback, "switchback_periods": args.switchback_periods,
                             "early_settle_s": args.early_settle}},
                Origin.system("bench-canary"))
            plan = ", ".join(f"{s['weight']:g} % for {s['pause_s']} s" for s in steps)
            log(f"  canary {c.pk}: {candidate} against {stable}, steps {plan}, latency against {args.against}"
                + (f" ({args.switchback}-s periods, {args.switchback_periods} of each per verdict)"
                   if args.against == "switchback" else "")
                + (f", early window {args.early_settle} s ago" if args.early_settle else ""))
            return c

    analyst = Analyst(begin, args.lead)
    analyst.start()
    probe = Probe(gw, GATEWAY_ID)
    if args.trace:
        probe.start()
    try:
        outs, t0 = load(args, gw, rate, label)
    finally:
        analyst.stop.set()
        analyst.join(10)
        probe.stop.set()
    result: dict[str, Any] = {"label": label}
    end = t0 + duration(args, label)
    start = t0
    c = analyst.canary
    if c is not None:
        start = analyst.started_at or t0
        c.refresh_from_db()
        if c.live:  # no verdict within the run: the bench ends it (a person would decide)
            canary.abort("scheduler", "bench ended without a verdict", Origin.system("bench-canary"))
            c.refresh_from_db()
            result["verdict"] = "none"
        else:
            result["verdict"] = c.state
            end = c.finished.timestamp()
        result["time_to_verdict_s"] = end - start if result["verdict"] != "none" else None
        arms = analysis.read_window(c.pk, start - 1, end, 1e9)
        served = {name: arm.requests for name, arm in arms.items()}
        total = sum(served.values())
        result.update(served=served, canary_share=served["canary"] / total if total else 0.0,
                      p95_arm={name: (p95([x / 1000 for x in arm.latency_ms])) for name, arm in arms.items()},
                      runs=list(c.runs.values_list("verdict", "summary")))
        assert Canary.objects.filter(state__in=Canary.LIVE).count() == 0
        # The stable policy alone in this phase, over the same length before the canary as the rollout lasted
        # (or the whole lead-in, when shorter), after the first 20 s of warm-up.
        alone = [o.latency_s for o in outs if max(t0 + 20, start - (end - start)) <= t0 + o.sent_at < start
                 and 200 <= o.status < 300]
        result["p95_alone"] = p95(alone)
    if args.trace:
        probe.join(10)
        write_trace(Path(args.trace) / f"{label}.json", c, t0, outs, probe)
    window = [o for o in outs if start <= t0 + o.sent_at <= end]
    ok = [o.latency_s for o in window if 200 <= o.status < 300]
    result.update(requests=len(window), ok=len(ok), p95_whole=p95(ok),
                  errors=sum(1 for o in window if not 200 <= o.status < 300))
    return result


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--nodes", type=int, default=6)
    ap.add_argument("--duration", type=float, default=480.0,
                    help="seconds of load per phase (default 480: the lead-in, then three steps, each judged only "
                         "once its requests have settled)")
    ap.add_argument("--bad-duration", type=float, default=0.0,
                    help="seconds of load in the bad phase (default: --duration); a bad candidate is aborted within "
                         "two minutes of its start, so the rest of a long phase only holds the bench lock")
    ap.add_argument("--lead", type=float, default=150.0,
                    help="seconds of the stable policy alone before the canary starts (default 150: 30 s of "
                         "warm-up and the analysis baseline_s)")
    ap.add_argument("--baseline", type=int, default=120, help="analysis baseline_s (default 120)")
    ap.add_argument("--against", default="switchback", choices=("before", "arms", "switchback"),
                    help="analysis latency_against (default switchback)")
    ap.add_argument("--switchback", type=int, default=10, help="analysis switchback_s (default 10)")
    ap.add_argument("--switchback-periods", type=int, default=4,
                    help="analysis switchback_periods: whole on and off periods (each) a verdict needs (default 4)")
    ap.add_argument("--early-settle", type=int, default=10,
                    help="analysis early_settle_s (default 10; 0: no early window)")
    ap.add_argument("--load", type=float, default=0.75,
                    help="rate as a share of the computed saturation (default 0.75, bench/routing.py's calibrated "
                         "load on its machine)")
    ap.add_argument("--rate", type=float, default=0.0, help="req/s; overrides --load")
    ap.add_argument("--steps", default="5:120,25:60,50:60",
                    help="canary steps, weight:pause_s,... (default 5:120,25:60,50:60: the issue's first step, 5 %% "
                         "for 120 s, then shorter ones to keep the bench short)")
    ap.add_argument("--analysis-interval", type=int, default=5, help="analysis interval_s (default 5)")
    ap.add_argument("--window", type=int, default=30, help="analysis window_s (default 30)")
    ap.add_argument("--min-requests", type=int, default=-1,
                    help="analysis min_requests per arm (default 50; 30 with --against switchback, where the "
                         "candidate routes half the time: 5 %% of 29.7 req/s over the on half of a 60-s window is "
                         "about 45 requests)")
    ap.add_argument("--initial-delay", type=int, default=0, help="analysis initial_delay_s (default 0: the settle "
                    "lag already keeps a step's first requests out until they have all ended)")
    ap.add_argument("--settle", type=int, default=-1,
                    help="analysis settle_s (default: --timeout, the longest a request can take here)")
    ap.add_argument("--phases", default="bad,good",
                    help="bad, good (each with the stable policy alone first) and baseline (stable alone only)")
    ap.add_argument("--failure-limit", type=int, default=1, help="analysis failure_limit (default 1)")
    ap.add_argument("--trace", default="", help="a folder: write <phase>.json there (every request as the client "
                    "and the gateway saw it, the gateway's /healthz round trips and queue counts, the runs)")
    ap.add_argument("--seed", type=int, default=7)
    ap.add_argument("--prompt-tokens", default="32:0.5,256:0.5")
    ap.add_argument("--max-tokens", default="64:0.5,192:0.5")
    ap.add_argument("--stream-fraction", type=float, default=0.3)
    ap.add_argument("--timeout", type=float, default=30.0)
    ap.add_argument("--interval", type=int, default=5, help="agent push interval, seconds (default 5)")
    ap.add_argument("--database", default="sy_bench_canary")
    ap.add_argument("--redis-db", type=int, default=int(os.environ.get("TEST_REDIS_DB", "12")))
    args = ap.parse_args()
    if args.min_requests < 0:
        args.min_requests = 30 if args.against == "switchback" else 50
    if args.settle < 0:
        args.settle = int(args.timeout + 0.999)
    phases = [p.strip() for p in args.phases.split(",") if p.strip()]

    db_url, redis_url = use_bench_database(args.database, args.redis_db)
    from agents.sim.profiles import MIXED, PROFILES
    from control.canary.models import Canary
    from control.loadgen.mix import parse_mix
    from dashboard.metrics.latest import LATEST_KEY, redis_client

    Canary.objects.filter(state__in=Canary.LIVE).update(state="aborted")  # an earlier, interrupted run's
    prompt = mean_prompt_tokens(parse_mix(args.prompt_tokens, int, "--prompt-tokens", 1, 8000))
    out_mix = parse_mix(args.max_tokens, int, "--max-tokens", 1, 4096)
    out = sum(v * w for v, w in zip(out_mix.values, out_mix.weights, strict=True)) / sum(out_mix.weights)
    kinds = [MIXED[i % len(MIXED)] for i in range(args.nodes)]
    saturation = sum(node_rate(PROFILES[k], prompt, out) for k in kinds)
    rate = args.rate or round(args.load * saturation, 1)
    unloaded_s = max(unloaded_latency(PROFILES[k], prompt, out) for k in set(kinds))
    log(f"fleet: {args.nodes} mixed nodes, computed saturation {saturation:.1f} req/s; offered {rate:g} req/s "
        f"({rate / saturation:.0%}); slowest unloaded latency {unloaded_s:.2f} s; {args.duration:g} s per phase")
    r = redis_client()
    r.hdel(LATEST_KEY, *[f"{POOL}-{i:02d}" for i in range(1, args.nodes + 1)])
    env = dict(os.environ, SWITCHYARD_DATABASE_URL=db_url, SWITCHYARD_REDIS_URL=redis_url)
    logs = Path(tempfile.mkdtemp(prefix="sy-bench-canary-"))
    procs: list[subprocess.Popen[bytes]] = []
    results: dict[str, dict[str, Any]] = {}
    try:
        port, gw_port, control_port = free_port(), free_port(), free_port()
        procs.append(start_server(port, 1, db_url, redis_url))
        fleet_log = open(logs / "simfleet.log", "wb")  # noqa: SIM115 - lives as long as the process
        procs.append(subprocess.Popen(
            [sys.executable, "manage.py", "simfleet", "--nodes", str(args.nodes), "--profile", "mixed", "--gpus", "2",
             "--pool", POOL, "--model", MODEL, "--server", f"http://127.0.0.1:{port}", "--interval",
             str(args.interval), "--control-port", str(control_port), "--seed", str(args.seed)],
            cwd=ROOT, env=env, stdout=fleet_log, stderr=subprocess.STDOUT))
        wait_port(control_port, procs[-1], f"simfleet (log: {logs / 'simfleet.log'})", 60)
        gw_log = open(logs / "gateway.log", "wb")  # noqa: SIM115
        procs.append(subprocess.Popen(
            [sys.executable, "manage.py", "gateway", "--port", str(gw_port), "--auth", "off", "--id", GATEWAY_ID],
            cwd=ROOT, env=env, stdout=gw_log, stderr=subprocess.STDOUT))
        wait_port(gw_port, procs[-1], f"the gateway (log: {logs / 'gateway.log'})", 60)
        gw, control = f"http://127.0.0.1:{gw_port}", f"http://127.0.0.1:{control_port}"
        wait_for("every node eligible at the gateway", lambda: read_status(gw).eligible == args.nodes, 60)
        plan = {"baseline": ("switchyard", None), "bad": ("switchyard", "classic"), "good": ("classic", "switchyard")}
        for name in phases:
            stable, candidate = plan[name]
            log(f"[{name}] stable {stable}" + (f", canary {candidate}" if candidate else " alone"))
            results[name] = phase(args, gw, control, rate, stable, candidate, name)
    finally:
        stop(procs)

    print()
    print("| phase | verdict | time to verdict | requests stable / canary | canary share | p95 stable arm | "
          "p95 canary arm | p95 whole during rollout (client) | p95 stable alone before (client) | errors |")
    print("|" + " --- |" * 10)
    for name, r in results.items():
        served, arms = r.get("served", {}), r.get("p95_arm", {})
        ttv = r.get("time_to_verdict_s")
        print(f"| {name} | {r.get('verdict', '-')} | {'-' if ttv is None else f'{ttv:.0f} s'} | "
              f"{served.get('stable', r['requests'])} / {served.get('canary', 0)} | {r.get('canary_share', 0):.1%} | "
              f"{fmt(arms.get('stable'))} | {fmt(arms.get('canary'))} | {fmt(r['p95_whole'])} | "
              f"{fmt(r.get('p95_alone'))} | {r['errors']} |")
    print()
    if "bad" in results:
        bad = results["bad"]
        ok = bad.get("verdict") == "aborted" and bad["canary_share"] < 0.10
        print(f"bad candidate: {bad.get('verdict')} after serving {bad['canary_share']:.1%} of the requests "
              f"(target: aborted before 10 %): {'met' if ok else 'NOT met'}")
        for ref, alone in (("just before it", bad.get("p95_alone")),
                           ("baseline phase", results.get("baseline", {}).get("p95_whole"))):
            if alone and bad["p95_whole"]:
                ratio = bad["p95_whole"] / alone
                print(f"client p95 during the bad rollout / stable alone ({ref}) = {ratio:.2f} (target <= 1.2: "
                      f"{'met' if ratio <= 1.2 else 'NOT met'})")
    if "good" in results:
        good = results["good"]
        print(f"good candidate: {good.get('verdict')} (target: promoted with no manual step): "
              f"{'met' if good.get('verdict') == 'promoted' else 'NOT met'}")


if __name__ == "__main__":
    main()
