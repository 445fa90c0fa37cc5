"""The gateway's request log (Redis stream `sy:reqlog`, DESIGN contract 1): parsing one entry into typed fields."""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

STREAM = "sy:reqlog"
STATE_PREFIX = "sy:gw:state:"


@dataclass(frozen=True)
class Entry:
    id: str
    ts: float
    gateway: str
    node: str
    pool: str
    model: str
    request_class: str
    status: int
    ttft_ms: float | None
    latency_ms: float | None
    prompt_tokens: int
    completion_tokens: int
    cache: str
    retries: int
    error: str
    arm: str = ""  # while a canary runs: canary | stable
    canary: int | None = None

    @property
    def minute(self) -> int:
        """Unix seconds of the minute the request finished in."""
        return int(self.ts // 60 * 60)


def _s(fields: dict[bytes, bytes], name: str) -> str:
    v = fields.get(name.encode())
    return v.decode("utf-8", "replace") if v is not None else ""


def _num(fields: dict[bytes, bytes], name: str) -> float | None:
    raw = _s(fields, name).strip()
    if raw == "":
        return None
    v = float(raw)
    if not math.isfinite(v) or v < 0:
        raise ValueError(f"{name}={raw!r}")
    return v


def parse(entry_id: bytes | str, fields: dict[bytes, bytes]) -> Entry:
    """One stream entry; raises ValueError when it breaks the contract (the aggregator counts and skips those)."""
    eid = entry_id.decode() if isinstance(entry_id, bytes) else entry_id
    ts = _num(fields, "ts")
    if ts is None:  # fall back to the stream id's milliseconds: when Redis stored it
        ts = int(eid.split("-", 1)[0]) / 1000
    status = _num(fields, "status")
    if status is None:
        raise ValueError("status missing")
    ttft = _num(fields, "ttft_ms")
    return Entry(
        id=eid, ts=ts, gateway=_s(fields, "gateway"), node=_s(fields, "node")[:120], pool=_s(fields, "pool")[:120],
        model=_s(fields, "model"), request_class=(_s(fields, "class") or "unknown")[:64], status=int(status),
        ttft_ms=ttft if ttft else None, latency_ms=_num(fields, "latency_ms"),
        prompt_tokens=int(_num(fields, "prompt_tokens") or 0),
        completion_tokens=int(_num(fields, "completion_tokens") or 0),
        cache=_s(fields, "cache"), retries=int(_num(fields, "retries") or 0), error=_s(fields, "error"),
        arm=_s(fields, "arm")[:8], canary=_canary(fields),
    )


def _canary(fields: dict[bytes, bytes]) -> int | None:
    raw = _s(fields, "canary").strip()
    return int(raw) if raw.isdigit() and len(raw) < 19 else None


def stream_id_at(ts: float) -> str:
    """The smallest stream id at or after unix time `ts` (for XRANGE/XTRIM MINID)."""
    return f"{int(ts * 1000)}-0"


def id_key(eid: str) -> tuple[int, int]:
    ms, _, seq = eid.partition("-")
    return int(ms), int(seq or 0)


def status_class(status: int) -> str:
    if status == 429:
        return "429"
    if 200 <= status < 300:
        return "2xx"
    if 500 <= status < 600 or status == 0:  # 0: no answer at all (connection failed)
        return "5xx"
    if 400 <= status < 500:
        return "4xx"
    return "other"


def decode_state(raw: Any) -> dict[str, Any] | None:
    import orjson

    try:
        state = orjson.loads(raw)
    except orjson.JSONDecodeError:
        return None
    return state if isinstance(state, dict) else None
