"""`python -m agents.check`: what this host's collectors read, without pushing anything.

Run it on a new GPU host before starting the agent: it prints one sample as JSON, then which catalogue metrics
this card, driver and server cannot provide (they are sent as null). `--power-test` also checks the power-cap
path the controller uses: it lowers GPU 0's limit a little, reads it back, and restores the previous limit.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from typing import Any

from agents.catalogue import GPU_METRICS, HOST_METRICS, INFERENCE_METRICS
from agents.collectors.host import HostCollector
from agents.collectors.inference import InferenceScraper
from agents.collectors.sim import SimBackend


def _nulls(sample: dict[str, Any]) -> dict[str, list[str]]:
    gpus = sample.get("gpus") or []
    return {
        "gpu": sorted({m.name for g in gpus for m in GPU_METRICS if g.get(m.name) is None}),
        "host": [m.name for m in HOST_METRICS if sample["host"].get(m.name) is None],
        "inference": [m.name for m in INFERENCE_METRICS if sample["inference"].get(m.name) is None],
    }


def power_test(nvml_collector: Any) -> dict[str, Any]:
    before = nvml_collector.collect()[0].get("power_limit_w")
    if before is None:
        return {"ok": False, "reason": "NVML does not report GPU 0's power limit"}
    target = before * 0.9
    applied = nvml_collector.set_power_limit(0, target)
    if applied is None:
        return {"ok": False, "before_w": before, "reason": "NVML refused the new limit (needs root)"}
    time.sleep(0.5)
    read_back = nvml_collector.collect()[0].get("power_limit_w")
    restored = nvml_collector.set_power_limit(0, before)
    return {"ok": read_back is not None and abs(read_back - applied) < 1.0, "before_w": before,
            "asked_w": round(target, 1), "applied_w": applied, "read_back_w": read_back, "restored_w": restored}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m agents.check", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--sim", action="store_true", help="read the simulated backend instead of NVML")
    parser.add_argument("--inference-url", help="base URL of the node's vLLM/SGLang server (default: none)")
    parser.add_argument("--power-test", action="store_true",
                        help="lower GPU 0's power limit by 10%%, read it back, restore it (needs root)")
    parser.add_argument("--interval", type=float, default=2.0,
                        help="seconds between the two reads that rates and GPM need (default 2)")
    args = parser.parse_args(argv)
    scraper = InferenceScraper(args.inference_url) if args.inference_url else None
    if args.sim:
        backend: Any = SimBackend(inference=scraper)
        nvml = None
    else:
        from agents.cli import AgentError, _nvml_collector
        from agents.collectors.base import CompositeBackend

        try:
            nvml = _nvml_collector()
        except AgentError as exc:
            print(f"agents.check: {exc}", file=sys.stderr)
            return 1
        backend = CompositeBackend(nvml, HostCollector(), scraper)
    backend.collect()  # the first read primes counters; rates and percentiles need two
    time.sleep(args.interval)
    started = time.perf_counter()
    sample = backend.collect()
    took_ms = (time.perf_counter() - started) * 1000
    report: dict[str, Any] = {"collect_ms": round(took_ms, 1), "sample": sample, "null": _nulls(sample)}
    if args.power_test:
        report["power_test"] = power_test(nvml) if nvml is not None else {"ok": False, "reason": "--sim"}
    backend.close()
    print(json.dumps(report, indent=2, default=str))
    return 0 if not args.power_test or report["power_test"]["ok"] else 1


if __name__ == "__main__":
    raise SystemExit(main())
