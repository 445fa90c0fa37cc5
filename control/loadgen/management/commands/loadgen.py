"""loadgen: open-loop load against the gateway (or any OpenAI-compatible URL), with a summary per priority class."""

from __future__ import annotations

import asyncio
import json
import os
import sys
from pathlib import Path
from typing import Any

from django.conf import settings
from django.core.management.base import BaseCommand, CommandError, CommandParser

from control.loadgen import curves, report, runner, workloads
from control.loadgen.mix import parse_mix


class Command(BaseCommand):
    help = (
        "Send open-loop Poisson load to an OpenAI-compatible URL (default: the gateway, SWITCHYARD_GATEWAY_URL) and "
        "print throughput, 429/error counts and latency/TTFT percentiles per priority class. Arrivals follow the "
        "rate curve whatever the server does, so overload shows as 429s and latency, not as a slower client. "
        "Examples: `loadgen --rate 20 --duration 60`; `loadgen --curve daily --rate 5 --peak-rate 60 "
        "--day-seconds 300 --duration 600` (a compressed day with its 14:00 peak); `loadgen --curve step --rate 10 "
        "--step-rate 80 --step-at 30`; `loadgen --workload shared-prefix --groups 32 --prompts-per-group 16` (prompts "
        "sharing long system prompts); `loadgen --workload multi-turn --turns 4 --think-s 3` (growing conversations)."
    )

    def add_arguments(self, parser: CommandParser) -> None:
        parser.add_argument("--url", default=settings.GATEWAY_URL, help="base URL (default %(default)s)")
        parser.add_argument("--token", default=os.environ.get("SWITCHYARD_TOKEN", ""),
                            help="API token sent as Bearer (default: $SWITCHYARD_TOKEN)")
        parser.add_argument("--model", default="sim-llm", help="model name (default %(default)s)")
        parser.add_argument("--duration", type=float, default=60.0, help="seconds of load (default %(default)s)")
        parser.add_argument("--curve", default="constant", choices=["constant", "step", "daily"],
                            help="rate curve (default %(default)s)")
        parser.add_argument("--rate", type=float, default=10.0,
                            help="req/s: the constant rate, the rate before a step, or a daily curve's night rate")
        parser.add_argument("--step-rate", type=float, default=0.0, help="step: req/s after the step")
        parser.add_argument("--step-at", type=float, default=0.0, help="step: seconds from the start")
        parser.add_argument("--peak-rate", type=float, default=0.0, help="daily: req/s at the peak")
        parser.add_argument("--day-seconds", type=float, default=600.0,
                            help="daily: length of one compressed day in seconds (default %(default)s)")
        parser.add_argument("--peak-hour", type=float, default=14.0, help="daily: hour of the peak (default 14)")
        parser.add_argument("--prompt-tokens", default="64:0.6,512:0.3,2048:0.1",
                            help="prompt length mix, tokens:weight,... (default %(default)s)")
        parser.add_argument("--max-tokens", default="32:0.5,128:0.4,512:0.1",
                            help="completion length mix (default %(default)s)")
        parser.add_argument("--priority", default="realtime:0.2,standard:0.5,batch:0.3",
                            help="X-Priority class mix (default %(default)s)")
        parser.add_argument("--stream-fraction", type=float, default=0.5,
                            help="share of streaming requests, 0..1 (default %(default)s)")
        parser.add_argument("--temperature", type=float, default=0.7,
                            help="sampling temperature; 0 makes answers cacheable (default %(default)s)")
        parser.add_argument("--slo", type=float, default=10.0,
                            help="latency SLO in seconds for goodput (default %(default)s)")
        parser.add_argument("--timeout", type=float, default=120.0, help="per-request timeout (default %(default)s)")
        parser.add_argument("--max-outstanding", type=int, default=2000,
                            help="requests in flight at most; beyond it arrivals count as client errors")
        parser.add_argument("--seed", type=int, default=None, help="random seed for a repeatable run")
        w = parser.add_argument_group("workload (what the prompts share; docs/gateway.md, cache-aware routing)")
        w.add_argument("--workload", choices=workloads.WORKLOADS, default="independent",
                       help="independent: --prompt-tokens/--max-tokens mixes, nothing shared (default); "
                            "shared-prefix: groups of prompts sharing a system prompt; multi-turn: sessions "
                            "resending a growing conversation")
        sp, mt = workloads.SharedPrefix(), workloads.MultiTurn()
        w.add_argument("--groups", type=int, default=sp.groups, help="shared-prefix: groups (default %(default)s)")
        w.add_argument("--prompts-per-group", type=int, default=sp.prompts_per_group,
                       help="shared-prefix: prompts per group (default %(default)s)")
        w.add_argument("--system-tokens", type=int, default=sp.system_tokens,
                       help="shared-prefix: system prompt tokens (default %(default)s)")
        w.add_argument("--question-tokens", type=int, default=sp.question_tokens,
                       help="shared-prefix: question tokens (default %(default)s)")
        w.add_argument("--answer-tokens", type=int, default=None,
                       help=f"shared-prefix / multi-turn: answer tokens (max_tokens; default {sp.answer_tokens})")
        w.add_argument("--turns", type=int, default=mt.turns, help="multi-turn: turns per session (default %(default)s)")
        w.add_argument("--context-tokens", type=int, default=mt.context_tokens,
                       help="multi-turn: tokens of each session's opening context (default %(default)s)")
        w.add_argument("--turn-tokens", type=int, default=mt.turn_tokens,
                       help="multi-turn: tokens of each turn's question (default %(default)s)")
        w.add_argument("--think-s", type=float, default=mt.think_s,
                       help="multi-turn: mean seconds between a session's turns (default %(default)s)")
        parser.add_argument("--json", dest="json_path", default="", help="also write the summary as JSON here")
        parser.add_argument("--no-progress", action="store_true", help="no progress bar")

    def handle(self, *args: Any, **o: Any) -> None:
        try:
            spec = curves.CurveSpec(kind=o["curve"], rate=o["rate"], step_rate=o["step_rate"], step_at_s=o["step_at"],
                                    peak_rate=o["peak_rate"], day_s=o["day_seconds"], peak_hour=o["peak_hour"])
            curve = curves.build(spec)
            workload = workload_of(o)
            load = runner.LoadSpec(
                url=o["url"].rstrip("/"), model=o["model"], curve=curve, duration_s=o["duration"],
                prompt_tokens=parse_mix(o["prompt_tokens"], int, "--prompt-tokens", 1, 100_000),
                max_tokens=parse_mix(o["max_tokens"], int, "--max-tokens", 1, 32_768),
                classes=parse_mix(o["priority"], str, "--priority"),
                stream_fraction=o["stream_fraction"], temperature=o["temperature"], token=o["token"],
                timeout_s=o["timeout"], max_outstanding=o["max_outstanding"], seed=o["seed"],
                workload=workload)
        except ValueError as exc:
            raise CommandError(str(exc)) from None
        if not 0 < o["duration"] <= 7 * 86400:
            raise CommandError("--duration must be above 0 and at most a week")
        if not 0 <= o["stream_fraction"] <= 1:
            raise CommandError("--stream-fraction must be between 0 and 1")
        if not 1 <= o["max_outstanding"] <= 100_000:
            raise CommandError("--max-outstanding must be between 1 and 100000")
        if not o["url"].startswith(("http://", "https://")):
            raise CommandError(f"--url {o['url']!r} must start with http:// or https://")
        self.stdout.write(f"loadgen -> {load.url}{load.path}: {o['curve']} curve, peak "
                          f"{curves.peak_of(curve, load.duration_s):.1f} req/s for {load.duration_s:g} s; classes "
                          f"{load.classes.describe()}; " + (f"workload {o['workload']}: {workload}" if workload
                                                                else f"prompts {load.prompt_tokens.describe()}"))
        outcomes = asyncio.run(runner.run(load, self._progress(load.duration_s, o["no_progress"])))
        rows = report.summarize(outcomes, load.duration_s, o["slo"])
        self.stdout.write("\n" + report.table(rows))
        shares = report.node_share(outcomes)
        if shares:
            self.stdout.write("\nrequests per node: " + ", ".join(f"{n} {c}" for n, c in shares.items()))
        for line in report.first_errors(outcomes):
            self.stdout.write(self.style.WARNING(f"error: {line}"))
        if o["json_path"]:
            Path(o["json_path"]).write_text(json.dumps(
                {"rows": [r.as_dict() for r in rows], "nodes": shares}, indent=2))
        if outcomes and all(x.status == 0 for x in outcomes):
            raise CommandError(f"no request got an answer from {load.url}: is the gateway running "
                               "(`python manage.py gateway`)?")

    def _progress(self, duration: float, quiet: bool) -> Any:
        if quiet:
            return None
        from tqdm import tqdm

        bar = tqdm(total=round(duration), unit="s", desc="load", file=sys.stderr, leave=False)

        def update(elapsed: float, sent: int) -> None:
            bar.n = min(round(elapsed), bar.total)
            bar.set_postfix(sent=sent, refresh=False)
            bar.refresh()
            if elapsed >= duration:
                bar.close()

        return update


def workload_of(o: dict[str, Any]) -> workloads.Workload | None:
    """The --workload and its parameters; ValueError naming the flag when one is out of range."""
    answer = o["answer_tokens"]
    if o["workload"] == "shared-prefix":
        w: workloads.Workload = workloads.SharedPrefix(
            groups=o["groups"], prompts_per_group=o["prompts_per_group"], system_tokens=o["system_tokens"],
            question_tokens=o["question_tokens"],
            answer_tokens=workloads.SharedPrefix.answer_tokens if answer is None else answer)
    elif o["workload"] == "multi-turn":
        w = workloads.MultiTurn(turns=o["turns"], context_tokens=o["context_tokens"], turn_tokens=o["turn_tokens"],
                                answer_tokens=workloads.MultiTurn.answer_tokens if answer is None else answer,
                                think_s=o["think_s"])
    else:
        return None
    w.check()
    return w
