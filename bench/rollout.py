"""A rolling update of a 6-node pool under steady load (issue 17): the controller's rollout (drain, wait, restart,
uncordon; max_unavailable 1) against the alternative, a rolling restart without a drain, in the same run.

One `manage.py simfleet` (h100 nodes) whose agents push every second to a `manage.py serve`, one
`manage.py gateway --auth off` in front of it, the pool bound to the local provider. Setup applies deployment A
(max_model_len 8192) with no load. Then, per phase, the same seeded open-loop Poisson load through the gateway:

    switchyard  --steady seconds of load, then deployment B (max_model_len 16384) is activated and the controller's
                reconcile (what the beat tick runs) is called every 0.5 s until the rollout is done
    no-drain    --steady seconds of load, then each node in turn is restarted at once (the same restart call, no
                drain) and the next one waits until it serves again and has reported

For each phase: requests sent before the rollout started (steady state) and while it ran; failed client requests
(any non-2xx or transport error) and p95 latency of each window. Targets: zero failed requests during the
controller's rollout, and its p95 within 1.5 x the steady state's.

    .venv/bin/python bench/rollout.py [--nodes 6] [--load 0.5 | --rate R] [--steady 30] [--boot 2] [--seed 7]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench.benchlib import ROOT, free_port, percentile, start_server, stop, use_bench_database, wait_port  # noqa: E402
from bench.loadrun import get_json, wait_for  # noqa: E402
from control.scheduler.status import read_status  # noqa: E402

POOL = "rollout"
MODEL = "sim-llm"


def log(msg: str) -> None:
    print(msg, flush=True)


def entry(max_model_len: int) -> dict[str, Any]:
    return {"model": MODEL, "params_b": 8, "tensor_parallel_size": 1, "max_model_len": max_model_len,
            "strategy": {"max_surge": 0, "max_unavailable": 1, "drain_timeout_s": 60}}


def deploy(max_model_len: int, reason: str) -> int:
    from control.policy import service as policies
    from core.audit.context import Origin

    current = policies.active("deployment")
    return policies.create_revision("deployment", {"pools": {POOL: entry(max_model_len)}}, reason, current.pk,
                                    Origin.system("bench")).revision.pk


def drive_rollout(timeout_s: float) -> dict[str, Any]:
    """Call the controller's reconcile until the pool's newest rollout is over; its id, state and seconds."""
    from django.db import connection
    from django.utils import timezone

    from control.controller import rollout
    from control.controller.models import Rollout

    t0 = time.monotonic()
    try:
        while time.monotonic() - t0 < timeout_s:
            rollout.reconcile(timezone.now())
            r = Rollout.objects.filter(pool__name=POOL).order_by("-id").first()
            if r is not None and r.state != "running":
                return {"id": r.pk, "state": r.state, "seconds": time.monotonic() - t0, "error": r.error,
                        "batches": len(r.batches)}
            time.sleep(0.5)
        return {"state": "timeout", "seconds": time.monotonic() - t0}
    finally:
        connection.close()


def restart_without_drain(control: str, gw: str, nodes: list[str], boot_s: float, interval: int) -> dict[str, Any]:
    """The alternative: restart each node at once, one at a time, the next once it serves and its agent has pushed
    (the gateway may still hold it in quarantine after the requests it refused while booting)."""
    import httpx

    t0 = time.monotonic()
    for name in nodes:
        httpx.post(f"{control}/nodes/{name}/restart", json={"serving": entry(12288), "boot_delay_s": boot_s},
                   timeout=10).raise_for_status()
        wait_for(f"{name} to serve", lambda n=name: get_json(f"{control}/nodes/{n}")["state"] == "up", 60, 0.2)
        time.sleep(interval + 1)
    return {"state": "done", "seconds": time.monotonic() - t0}


def window(outs: list[Any], start: float, end: float) -> dict[str, Any]:
    inside = [o for o in outs if start <= o.sent_at < end]
    ok = [o.latency_s for o in inside if 200 <= o.status < 300 and not o.error]
    failed = [o for o in inside if not (200 <= o.status < 300) or o.error]
    return {"sent": len(inside), "failed": len(failed), "p50_s": percentile(ok, 0.5) if ok else None,
            "p95_s": percentile(ok, 0.95) if ok else None,
            "errors": sorted({f"{o.status} {o.error}"[:120] for o in failed})[:5]}


def phase(name: str, args: argparse.Namespace, gw: str, rate: float, act: Any) -> dict[str, Any]:
    """Steady load; after --steady seconds `act()` runs (in a thread) while the load goes on."""
    from control.loadgen import curves, runner
    from control.loadgen.mix import parse_mix

    budget = args.steady + args.max_rollout + args.tail
    spec = runner.LoadSpec(
        url=gw, model=MODEL, curve=curves.build(curves.CurveSpec(kind="constant", rate=rate)), duration_s=budget,
        prompt_tokens=parse_mix("64:0.5,256:0.5", int, "p", 1, 8000), max_tokens=parse_mix("64:0.5,128:0.5", int, "m",
                                                                                        1, 4096),
        classes=parse_mix("standard", str, "x"), stream_fraction=0.3, temperature=0.7, timeout_s=60, seed=args.seed,
        extra_body={"ignore_eos": True})
    marks: dict[str, Any] = {}

    def worker() -> None:
        time.sleep(args.steady)
        marks["start"] = time.monotonic()
        try:
            marks["result"] = act()
        except Exception as exc:  # noqa: BLE001 - reported with the phase's figures
            marks["result"] = {"state": f"error: {exc}"}
        marks["end"] = time.monotonic()

    log(f"[{name}] {rate:g} req/s; rollout after {args.steady:g} s")
    t_load = time.monotonic()
    thread = threading.Thread(target=worker, daemon=True)
    thread.start()

    # The load runs its whole duration (steady + max-rollout + tail); only the windows around the rollout count.
    outs = asyncio.run(runner.run(spec))
    thread.join(args.max_rollout)
    if "start" not in marks:
        raise SystemExit(f"[{name}] the load ended before the rollout started")
    # sent_at is seconds since the load started (runner's clock); the marks are monotonic.
    start, end = marks["start"] - t_load, marks.get("end", time.monotonic()) - t_load
    steady = window(outs, 5.0, start)
    during = window(outs, start, end)
    ratio = (during["p95_s"] / steady["p95_s"]) if during["p95_s"] and steady["p95_s"] else None
    res = {"name": name, "rate": rate, "rollout": marks.get("result"), "steady": steady, "during": during,
           "p95_ratio": ratio}
    log(f"[{name}] rollout {marks.get('result', {}).get('state')} in {end - start:.0f} s; steady: {steady['sent']} "
        f"sent, {steady['failed']} failed, p95 {fmt(steady['p95_s'])}; during: {during['sent']} sent, "
        f"{during['failed']} failed, p95 {fmt(during['p95_s'])} ({fmt_ratio(ratio)} of steady)")
    for e in during["errors"]:
        log(f"    error: {e}")
    return res


def fmt(x: float | None) -> str:
    return "-" if x is None else f"{x:.2f} s"


def fmt_ratio(x: float | None) -> str:
    return "-" if x is None else f"{x:.2f}x"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--nodes", type=int, default=6)
    ap.add_argument("--load", type=float, default=0.5, help="share of the pool's computed saturation (default 0.5)")
    ap.add_argument("--rate", type=float, default=0.0, help="req/s; overrides --load (a loaded machine's load "
                                                             "generator and gateway keep up with less)")
    ap.add_argument("--steady", type=float, default=30.0, help="seconds of load before the rollout (default 30)")
    ap.add_argument("--max-rollout", type=float, default=90.0, help="load seconds allowed for a rollout (default 90)")
    ap.add_argument("--tail", type=float, default=5.0, help="load seconds after it (default 5)")
    ap.add_argument("--boot", type=float, default=2.0, help="seconds a restarted node takes to serve (default 2)")
    ap.add_argument("--interval", type=int, default=1, help="agent push interval, seconds (default 1)")
    ap.add_argument("--seed", type=int, default=7)
    ap.add_argument("--phases", default="switchyard,no-drain")
    ap.add_argument("--json", dest="json_path", default="")
    ap.add_argument("--database", default="sy_bench_rollout")
    ap.add_argument("--redis-db", type=int, default=int(os.environ.get("TEST_REDIS_DB", "12")))
    args = ap.parse_args()

    db_url, redis_url = use_bench_database(args.database, args.redis_db)
    from agents.sim.profiles import PROFILES
    from bench.routing import mean_prompt_tokens, node_rate
    from control.controller import bindings
    from control.controller.models import Rollout
    from control.loadgen.mix import parse_mix
    from core.audit.context import Origin
    from dashboard.fleet.models import GPU, Pool
    from dashboard.metrics.latest import LATEST_KEY, redis_client

    prompt = mean_prompt_tokens(parse_mix("64:0.5,256:0.5", int, "p", 1, 8000))
    saturation = args.nodes * node_rate(PROFILES["h100"], prompt, 96.0)
    rate = args.rate or round(args.load * saturation, 1)
    log(f"pool: {args.nodes} h100 nodes, saturation {saturation:.1f} req/s (agents/sim/profiles.py); offered {rate:g} "
        f"req/s ({rate / saturation:.0%}); max_unavailable 1, boot {args.boot:g} s")
    redis_client().hdel(LATEST_KEY, *[f"{POOL}-{i:02d}" for i in range(1, args.nodes + 1)])
    env = dict(os.environ, SWITCHYARD_DATABASE_URL=db_url, SWITCHYARD_REDIS_URL=redis_url)
    logs = Path(tempfile.mkdtemp(prefix="sy-bench-rollout-"))
    procs: list[subprocess.Popen[bytes]] = []
    results = []
    try:
        port, gw_port, control_port = free_port(), free_port(), free_port()
        procs.append(start_server(port, 1, db_url, redis_url))
        procs.append(subprocess.Popen(
            [sys.executable, "manage.py", "simfleet", "--nodes", str(args.nodes), "--profile", "h100", "--gpus", "1",
             "--pool", POOL, "--model", MODEL, "--server", f"http://127.0.0.1:{port}", "--interval",
             str(args.interval), "--control-port", str(control_port), "--seed", str(args.seed)],
            cwd=ROOT, env=env, stdout=open(logs / "simfleet.log", "wb"), stderr=subprocess.STDOUT))  # noqa: SIM115
        wait_port(control_port, procs[-1], f"simfleet (log: {logs / 'simfleet.log'})", 60)
        procs.append(subprocess.Popen(
            [sys.executable, "manage.py", "gateway", "--port", str(gw_port), "--auth", "off", "--id", "bench-rollout"],
            cwd=ROOT, env=env, stdout=open(logs / "gateway.log", "wb"), stderr=subprocess.STDOUT))  # noqa: SIM115
        wait_port(gw_port, procs[-1], f"the gateway (log: {logs / 'gateway.log'})", 60)
        gw, control = f"http://127.0.0.1:{gw_port}", f"http://127.0.0.1:{control_port}"
        wait_for("every node eligible at the gateway", lambda: read_status(gw).eligible == args.nodes, 60)
        wait_for("the nodes' GPUs", lambda: GPU.objects.filter(node__pool__name=POOL).count() >= args.nodes, 30)
        Pool.objects.get_or_create(name=POOL)
        bindings.set_provider(POOL, "local", {"url": control, "boot_delay_s": args.boot}, True, "bench",
                              Origin.system("bench"))
        nodes = sorted(n["name"] for n in get_json(f"{control}/nodes")["nodes"])
        log(f"gateway {gw}, fleet control {control}, logs in {logs}")
        deploy(8192, "bench: deployment A")
        warm = drive_rollout(300)
        log(f"setup: deployment A rolled out with no load ({warm['state']}, {warm['seconds']:.0f} s)")
        wait_for("every node eligible again", lambda: read_status(gw).eligible == args.nodes, 60)
        for name in [p.strip() for p in args.phases.split(",") if p.strip()]:
            if name == "switchyard":
                def act() -> dict[str, Any]:
                    deploy(16384, "bench: deployment B")
                    return drive_rollout(args.max_rollout)
            elif name == "no-drain":
                def act() -> dict[str, Any]:
                    return restart_without_drain(control, gw, nodes, args.boot, args.interval)
            else:
                raise SystemExit(f"unknown phase {name!r}")
            results.append(phase(name, args, gw, rate, act))
            wait_for("every node eligible again", lambda: read_status(gw).eligible == args.nodes, 60)
        log(f"rollouts: {list(Rollout.objects.values_list('id', 'state'))}")
    finally:
        stop(procs)

    print()
    print(f"{'phase':<12} {'steady p95':>10} {'during p95':>10} {'ratio':>7} {'sent':>6} {'failed':>7} {'rollout':>9}")
    for r in results:
        d, s = r["during"], r["steady"]
        secs = (r["rollout"] or {}).get("seconds")
        print(f"{r['name']:<12} {fmt(s['p95_s']):>10} {fmt(d['p95_s']):>10} {fmt_ratio(r['p95_ratio']):>7} "
              f"{d['sent']:>6} {d['failed']:>7} {('-' if secs is None else f'{secs:.0f} s'):>9}")
    by = {r["name"]: r for r in results}
    print()
    if "switchyard" in by:
        sy = by["switchyard"]
        ok_fail = sy["during"]["failed"] == 0
        ok_p95 = sy["p95_ratio"] is not None and sy["p95_ratio"] <= 1.5
        print(f"switchyard rollout: {sy['during']['failed']} failed client requests (target 0: "
              f"{'met' if ok_fail else 'NOT met'}); p95 {fmt_ratio(sy['p95_ratio'])} of steady state (target <= 1.5x: "
              f"{'met' if ok_p95 else 'NOT met'})")
    if "no-drain" in by:
        print(f"no-drain rolling restart: {by['no-drain']['during']['failed']} failed client requests, p95 "
              f"{fmt_ratio(by['no-drain']['p95_ratio'])} of steady state")
    if args.json_path:
        Path(args.json_path).write_text(json.dumps(results, indent=2, default=str))


if __name__ == "__main__":
    main()
