"""The summary a load run ends with: per class and overall, what an operator compares between runs."""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass
from typing import Any

from control.loadgen.runner import Outcome


def quantile(values: list[float], q: float) -> float | None:
    """By rank, no interpolation (a value that was measured); None when there is nothing."""
    if not values:
        return None
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


@dataclass
class Row:
    name: str
    sent: int
    ok: int
    shed_429: int
    server_errors: int
    client_errors: int
    throughput: float
    goodput: float
    tokens_s: float
    latency: tuple[float | None, float | None, float | None]
    ttft: tuple[float | None, float | None, float | None]

    def as_dict(self) -> dict[str, Any]:
        return {**self.__dict__, "latency": dict(zip(("p50", "p95", "p99"), self.latency, strict=True)),
                "ttft": dict(zip(("p50", "p95", "p99"), self.ttft, strict=True))}


def row(name: str, outs: list[Outcome], duration_s: float, slo_s: float) -> Row:
    ok = [o for o in outs if 200 <= o.status < 300]
    lat = [o.latency_s for o in ok]
    ttft = [o.ttft_s for o in ok if o.ttft_s is not None]
    span = max(duration_s, 1e-9)
    return Row(
        name=name, sent=len(outs), ok=len(ok),
        shed_429=sum(1 for o in outs if o.status == 429),
        server_errors=sum(1 for o in outs if o.status >= 500 or (300 <= o.status < 500 and o.status != 429)),
        client_errors=sum(1 for o in outs if o.status == 0),
        throughput=len(ok) / span, goodput=sum(1 for x in lat if x <= slo_s) / span,
        tokens_s=sum(o.completion_tokens for o in ok) / span,
        latency=(quantile(lat, 0.5), quantile(lat, 0.95), quantile(lat, 0.99)),
        ttft=(quantile(ttft, 0.5), quantile(ttft, 0.95), quantile(ttft, 0.99)),
    )


def summarize(outs: list[Outcome], duration_s: float, slo_s: float) -> list[Row]:
    classes = sorted({o.cls for o in outs})
    rows = [row(c, [o for o in outs if o.cls == c], duration_s, slo_s) for c in classes]
    return [*rows, row("all", outs, duration_s, slo_s)] if len(rows) != 1 else rows


def _s(x: float | None) -> str:
    return "-" if x is None else (f"{x * 1000:.0f}ms" if x < 1 else f"{x:.2f}s")


def table(rows: list[Row]) -> str:
    head = (f"{'class':<10} {'sent':>7} {'ok':>7} {'429':>6} {'5xx/4xx':>7} {'client':>6} {'ok/s':>7} {'good/s':>7} "
            f"{'tok/s':>8}  {'lat p50':>8} {'p95':>8} {'p99':>8}  {'ttft p50':>8} {'p95':>8} {'p99':>8}")
    lines = [head, "-" * len(head)]
    for r in rows:
        lines.append(
            f"{r.name:<10} {r.sent:>7} {r.ok:>7} {r.shed_429:>6} {r.server_errors:>7} {r.client_errors:>6} "
            f"{r.throughput:>7.1f} {r.goodput:>7.1f} {r.tokens_s:>8.0f}  "
            + " ".join(f"{_s(x):>8}" for x in r.latency) + "  " + " ".join(f"{_s(x):>8}" for x in r.ttft))
    return "\n".join(lines)


def node_share(outs: list[Outcome]) -> dict[str, int]:
    return dict(Counter(o.node or "(none)" for o in outs if o.status).most_common())


def first_errors(outs: list[Outcome], limit: int = 3) -> list[str]:
    seen = Counter(f"{o.status or 'no answer'}: {o.error}" for o in outs if o.error)
    return [f"{n} x {text}" for text, n in seen.most_common(limit)]
