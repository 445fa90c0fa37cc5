"""Per switchback period, from a `bench/canary.py --trace DIR` file: the client's sends against the gateway's
arrival stamps, the latencies, the gateway's /healthz round trip and its waiting queue.

What it answers: whether the requests of the on periods arrive (are stamped) as the client sent them or are held
somewhere first (a stamping backlog, a stalled event loop, a wait queue across period boundaries), and whether the
on periods are slower than the off ones period by period or only by the luck of a few.

    .venv/bin/python bench/canary_trace.py /tmp/trace/good.json
"""

from __future__ import annotations

import argparse
import bisect
import math
import sys
from pathlib import Path
from typing import Any

import orjson

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from control.canary.split import period_on  # noqa: E402


def p95(values: list[float]) -> float:
    ordered = sorted(values)
    return ordered[max(0, math.ceil(0.95 * len(ordered)) - 1)] if ordered else math.nan


def mean(values: list[float]) -> float:
    return sum(values) / len(values) if values else math.nan


def periods(doc: dict[str, Any]) -> list[dict[str, Any]]:
    c = doc["canary"]
    anchor, length, cid = c["anchor"], c["analysis"]["switchback_s"], c["id"]
    gateway = sorted(doc["gateway"], key=lambda x: x[0])
    client = sorted(doc["client"], key=lambda x: x[0])
    end = c["finished"] or (gateway[-1][0] if gateway else anchor)
    sends, stamps = [x[0] for x in client], [x[0] for x in gateway]

    def backlog(t: float) -> int:  # sent by the client's schedule, not yet stamped by the gateway
        return bisect.bisect_right(sends, t) - bisect.bisect_right(stamps, t)

    zero = backlog(anchor + 0.5)
    rows = []
    for k in range(int((end - anchor) // length)):
        a, b = anchor + k * length, anchor + (k + 1) * length
        sent = [x for x in client if a <= x[0] < b]
        logged = [x for x in gateway if a <= x[0] < b]
        lag = [backlog(a + i * 0.1) - zero for i in range(int(length * 10))]
        rows.append({
            "k": k, "on": period_on(cid, k), "sent": len(sent),
            "client_p95": p95([x[1] for x in sent if x[2] == 200]), "stamped": len(logged),
            "stable": sum(1 for x in logged if x[1] == "stable"), "canary": sum(1 for x in logged if x[1] == "canary"),
            "stable_p95": p95([x[2] / 1000 for x in logged if x[1] == "stable"]),
            "backlog_mean": mean(lag), "backlog_max": max(lag),
            "rtt_p95_ms": p95([r[1] * 1000 for r in doc["rtt"] if a <= r[0] < b and r[1] >= 0]),
            "rtt_max_ms": max([r[1] * 1000 for r in doc["rtt"] if a <= r[0] < b and r[1] >= 0], default=math.nan),
            "waiting": mean([sum(s[1].values()) for s in doc["state"] if a <= s[0] < b]),
            "in_flight": mean([s[2] for s in doc["state"] if a <= s[0] < b]),
        })
    return rows


def main() -> None:
    ap = argparse.ArgumentParser(description="Per switchback period of a canary trace: the client's sends against the "
                                 "gateway's arrival stamps, latencies, /healthz round trips and the waiting queue.")
    ap.add_argument("trace", type=Path, help="a file that `bench/canary.py --trace DIR` wrote (DIR/good.json, ...)")
    args = ap.parse_args()
    doc = orjson.loads(args.trace.read_bytes())
    c = doc["canary"]
    rows = periods(doc)
    print(f"canary {c['id']} ({c['state']}), {c['analysis']['switchback_s']}-s periods, {len(rows)} whole periods")
    print("period | state | client sent, p95 s | gateway stamped (stable/canary), stable p95 s | stamping backlog "
          "mean/max | /healthz p95/max ms | waiting | in flight")
    for r in rows:
        print(f"{r['k']:4d} | {'on ' if r['on'] else 'off'} | {r['sent']:4d} {r['client_p95']:5.1f} | {r['stamped']:4d} "
              f"({r['stable']}/{r['canary']}) {r['stable_p95']:5.1f} | {r['backlog_mean']:5.1f}/{r['backlog_max']:3d} | "
              f"{r['rtt_p95_ms']:4.0f}/{r['rtt_max_ms']:4.0f} | {r['waiting']:5.1f} | {r['in_flight']:5.1f}")
    for state in (True, False):
        sel = [r for r in rows if r["on"] == state and r["sent"]]
        if sel:
            print(f"{'on ' if state else 'off'} ({len(sel)} periods): sent {mean([r['sent'] for r in sel]):.1f} and "
                  f"stamped {mean([r['stamped'] for r in sel]):.1f} per period; client p95 per period "
                  f"{min(r['client_p95'] for r in sel):.1f}-{max(r['client_p95'] for r in sel):.1f} s (median "
                  f"{sorted(r['client_p95'] for r in sel)[len(sel) // 2]:.1f}); stamping backlog "
                  f"{mean([r['backlog_mean'] for r in sel]):.1f}; waiting {mean([r['waiting'] for r in sel]):.1f}")


if __name__ == "__main__":
    main()
