"""Power capping (DVFS): the `power` policy turned into per-GPU limits for every node, handed to the agents, checked
for convergence and audited; and energy per generated token per pool.

The loop (reconcile, every 15 s under the controller's lock) is level-triggered:

1. For each node that is not removed, the caps it should run at: `desired_caps` of the active power policy for the
   node's pool, from the GPUs the node reports and their default limits (the agent reports those in `applied`).
2. Those caps go to the Redis hash sy:power:desired (one field per node, only when they change); ingest answers
   each push with the node's field as `desired.power_limit_w` (dashboard/fleet/ingest.py). A change is audited
   once per pool ("power.cap"), not once per node, and never again while nothing changes.
3. The agent applies the caps through NVML or the simulator, clamped to the board's constraints, and reports what
   it applied (its `applied` block, kept checked in its latest snapshot) and the enforced limit in its samples
   (both in sy:latest). A GPU is
   converged when the enforced limit is within 1 W of the cap, or when the agent was asked for the cap and the
   board holds the clamped value it applied instead ("clamped": converged, and said so). Uncapped, a GPU is
   converged when the agent holds no cap on it.
4. A node still not converged CONVERGE_TIMEOUT_S after its caps changed (or after it drifted) is audited once as
   "power.not_converged" and raises an alert; when it converges, "power.converged" (and the alert resolves). The
   per-node state lives in the Redis hash sy:power:state, so a rerun writes nothing new.
"""

from __future__ import annotations

import logging
from collections import defaultdict
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any

import orjson
from django.db import connection, transaction

from control.controller import notify
from control.policy import schemas
from control.policy import service as policies
from core.audit.context import Origin
from core.audit.record import record
from dashboard.fleet.ingest import POWER_DESIRED_KEY, watts_map
from dashboard.fleet.models import Node, Pool
from dashboard.metrics import schema
from dashboard.metrics.latest import LATEST_KEY, redis_client

log = logging.getLogger(__name__)

ACTOR = "controller"
STATE_KEY = "sy:power:state"
TOLERANCE_W = 1.0  # NVML takes milliwatts and boards round: within a watt is the limit asked for
CONVERGE_TIMEOUT_S = 120  # or three push intervals of the node, whichever is longer
STALE_S = 120  # a node whose latest sample is older is not judged (it is down; liveness alerts say so)
DEFAULT_INTERVAL_S = 5
MAX_LISTED = 100  # nodes named in one audit event; the count says how many more
ALERT_CHUNK = 100
RAW_WINDOW_MAX_S = 900  # energy_per_token reads raw samples up to this window, 1-minute rollups beyond

# Node verdicts, and the statuses kept per node in STATE_KEY.
CONVERGED, CLAMPED, PENDING, NOT_CONVERGED, UNKNOWN = "converged", "clamped", "pending", "not_converged", "unknown"
_OK = (CONVERGED, CLAMPED)


# -- the policy ----------------------------------------------------------------------------------------------

def in_peak(policy: dict[str, Any], now: datetime) -> bool:
    """Whether `now` falls in the policy's peak hours [peak_start_hour, peak_end_hour) UTC; a start after the end
    wraps past midnight (22-6 is the night)."""
    hour = (now if now.tzinfo is None else now.astimezone(UTC)).hour
    start, end = int(policy.get("peak_start_hour", 12)), int(policy.get("peak_end_hour", 18))
    return start <= hour < end if start < end else (hour >= start or hour < end)


def desired_caps(document: dict[str, Any], pool: str, defaults_w: dict[str, float | None],
                 now: datetime) -> dict[str, float]:
    """Per GPU index (the keys of `defaults_w`), the cap in watts that `pool`'s power policy wants at `now`.

    cap: cap_w on every GPU (the board clamps what it cannot do); cap_pct: pct % of each GPU's default limit;
    off_peak: the same outside the peak hours and nothing inside them; uncapped: nothing. A GPU whose default is
    unknown (None) gets no percentage cap: a guess could throttle a card far below what was meant. Pure.
    """
    policy = schemas.for_pool(document, pool)
    mode = policy.get("mode", "uncapped")
    indices = sorted(defaults_w, key=lambda i: (len(i), i))
    if mode == "cap":
        return {i: float(policy["cap_w"]) for i in indices}
    if mode == "cap_pct" or (mode == "off_peak" and not in_peak(policy, now)):
        pct = float(policy["pct"])
        return {i: round(d * pct / 100.0, 1) for i in indices if (d := defaults_w[i]) is not None and d > 0}
    return {}


def describe(policy: dict[str, Any], now: datetime) -> str:
    mode = policy.get("mode", "uncapped")
    if mode == "cap":
        return f"mode cap: {policy['cap_w']:g} W per GPU"
    if mode == "cap_pct":
        return f"mode cap_pct: {policy['pct']:g} % of each GPU's default limit"
    if mode == "off_peak":
        hours = f"{policy.get('peak_start_hour', 12)}-{policy.get('peak_end_hour', 18)} h UTC"
        now_is = "in the peak: uncapped" if in_peak(policy, now) else f"off-peak: {policy['pct']:g} % of default"
        return f"mode off_peak: {policy['pct']:g} % of default outside {hours} (now {now_is})"
    return "mode uncapped"


# -- what a node reports -------------------------------------------------------------------------------------

def _gpus(snapshot: dict[str, Any] | None) -> dict[str, dict[str, Any]]:
    out: dict[str, dict[str, Any]] = {}
    for g in (snapshot or {}).get("gpus") or []:
        if isinstance(g, dict) and type(g.get("index")) is int:
            out[str(g["index"])] = g
    return out


def node_defaults(snapshot: dict[str, Any] | None, applied: dict[str, Any]) -> dict[str, float | None]:
    """The node's GPUs (those in its latest sample and those it reported a default for) with their default power
    limits, None where unknown."""
    defaults = watts_map(applied.get("power_default_w"))
    out: dict[str, float | None] = dict.fromkeys(_gpus(snapshot))
    out.update(defaults)
    return out


def _fresh(snapshot: dict[str, Any] | None, now: datetime) -> bool:
    try:
        ts = datetime.fromisoformat(snapshot["ts"]) if snapshot else None
    except (KeyError, TypeError, ValueError):
        return False
    return ts is not None and (now - ts).total_seconds() <= STALE_S


def _num(value: Any) -> float | None:
    return float(value) if isinstance(value, int | float) and not isinstance(value, bool) else None


@dataclass
class Verdict:
    status: str  # converged, clamped, pending, unknown
    gpus_ok: int = 0
    gpus: int = 0
    clamps: list[dict[str, Any]] = field(default_factory=list)  # {gpu, asked_w, applied_w}
    off: list[dict[str, Any]] = field(default_factory=list)  # {gpu, desired_w, reported_w, applied_w}


def judge(desired: dict[str, float], snapshot: dict[str, Any] | None, applied: dict[str, Any],
          now: datetime) -> Verdict:
    """Whether the node runs `desired` (see the module docstring for the rule)."""
    if not _fresh(snapshot, now):
        return Verdict(UNKNOWN)
    gpus = _gpus(snapshot)
    limits = watts_map(applied.get("power_limit_w"))
    asked = watts_map(applied.get("power_asked_w"))
    v = Verdict(CONVERGED)
    for i in sorted(set(gpus) | set(desired), key=lambda k: (len(k), k)):
        want, have, ask = desired.get(i), limits.get(i), asked.get(i)
        enforced = _num((gpus.get(i) or {}).get("power_limit_w"))
        v.gpus += 1
        if want is None:
            ok = have is None  # uncapped: the agent holds no cap of its own (a card it never capped is not ours)
        else:
            reading = enforced if enforced is not None else have
            ok = reading is not None and abs(reading - want) <= TOLERANCE_W
            if not ok and ask is not None and have is not None and abs(ask - want) <= TOLERANCE_W \
                    and (enforced is None or abs(enforced - have) <= TOLERANCE_W):
                ok = True  # asked for the cap, the board took the nearest limit it allows
                v.clamps.append({"gpu": int(i), "asked_w": want, "applied_w": have})
        if ok:
            v.gpus_ok += 1
        else:
            v.off.append({"gpu": int(i), "desired_w": want, "reported_w": enforced, "applied_w": have})
    if v.off:
        v.status = PENDING
    elif v.clamps:
        v.status = CLAMPED
    return v


# -- the loop ------------------------------------------------------------------------------------------------

@dataclass
class PowerResult:
    nodes: int = 0
    changed: dict[str, list[str]] = field(default_factory=dict)  # pool -> nodes whose caps changed
    removed: list[str] = field(default_factory=list)  # nodes whose power state was dropped
    converged: list[str] = field(default_factory=list)  # nodes that converged this tick
    not_converged: list[str] = field(default_factory=list)  # nodes flagged this tick
    status: dict[str, str] = field(default_factory=dict)  # node -> its status after this tick
    audits: int = 0


def _load(raw: dict[bytes, bytes]) -> dict[str, dict[str, Any]]:
    out = {}
    for k, v in raw.items():
        try:
            doc = orjson.loads(v)
        except orjson.JSONDecodeError:
            continue
        if isinstance(doc, dict):
            out[k.decode()] = doc
    return out


def _read_redis() -> tuple[dict[str, dict[str, float]], dict[str, dict[str, Any]], dict[str, dict[str, Any]],
                           dict[str, dict[str, Any]]]:
    """(desired caps, applied blocks, convergence state, latest snapshots) per node. The applied block is the one
    ingest kept (checked) in the node's latest snapshot: what the agent said with its newest sample."""
    pipe = redis_client().pipeline(transaction=False)
    for key in (POWER_DESIRED_KEY, STATE_KEY, LATEST_KEY):
        pipe.hgetall(key)
    desired_raw, state, latest = (_load(r) for r in pipe.execute())
    applied = {name: snap["applied"] for name, snap in latest.items() if isinstance(snap.get("applied"), dict)}
    return {k: watts_map(v) for k, v in desired_raw.items()}, applied, state, latest


def _iso(ts: datetime) -> str:
    return ts.astimezone(UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")


def _since(state: dict[str, Any]) -> datetime | None:
    try:
        return datetime.fromisoformat(state["since"]) if state.get("since") else None
    except (TypeError, ValueError):
        return None


def _watts(value: float | None) -> str:
    return "none" if value is None else f"{value:g} W"


def _listed(items: dict[str, Any]) -> dict[str, Any]:
    names = sorted(items)
    out = {n: items[n] for n in names[:MAX_LISTED]}
    if len(names) > MAX_LISTED:
        out["..."] = f"{len(names) - MAX_LISTED} more node(s)"
    return out


def _alert(status: str, pool: str, node: str, started: datetime, now: datetime, summary: str,
           description: str) -> dict[str, Any]:
    """The node's not-converged alert, firing or resolved (one fingerprint per pool and node ties the two)."""
    return notify.alert("power_not_converged", {"pool": pool, "node": node}, summary, description, status=status,
                        started=started, ended=now)


def reconcile(now: datetime | None = None) -> PowerResult:
    """One tick of the power loop (see the module docstring). Idempotent: a rerun with nothing changed writes
    nothing, audits nothing and alerts nothing."""
    now = now or datetime.now(UTC)
    rev = policies.active("power")
    document = schemas.validate("power", rev.document)
    nodes = list(Node.objects.exclude(state=Node.State.REMOVED).values_list("name", "pool__name", "interval_s"))
    old_desired, applied, state, latest = _read_redis()
    result = PowerResult(nodes=len(nodes))

    desired_writes: dict[str, dict[str, float]] = {}
    state_writes: dict[str, dict[str, Any]] = {}
    changes: dict[str, dict[str, tuple[dict[str, float], dict[str, float]]]] = defaultdict(dict)
    converged: dict[str, dict[str, Any]] = defaultdict(dict)  # pool -> node -> clamps
    flagged: dict[str, dict[str, Any]] = defaultdict(dict)  # pool -> node -> GPUs off
    alerts: list[dict[str, Any]] = []

    for name, pool, interval in nodes:
        snap, app = latest.get(name), applied.get(name) or {}
        caps = desired_caps(document, pool, node_defaults(snap, app), now)
        before = old_desired.get(name)
        changed = before != caps
        if changed:
            desired_writes[name] = caps
            if before is not None or caps:  # a new node that is to stay uncapped is no change of caps
                changes[pool][name] = (before or {}, caps)
        old = state.get(name) or {}
        status, since, alerted = old.get("status"), _since(old), bool(old.get("alerted"))
        if changed and (before is not None or caps):
            status, since = PENDING, None
        verdict = judge(caps, snap, app, now)
        timeout = max(CONVERGE_TIMEOUT_S, 3 * (interval or (app.get("interval_s") or DEFAULT_INTERVAL_S)))
        if verdict.status == UNKNOWN:
            # Down or never reported: not judged. A pending clock stops and starts again when the node reports.
            status = status or UNKNOWN
            if status in (PENDING, UNKNOWN):
                since = None
        elif verdict.status in _OK:
            if status in (PENDING, NOT_CONVERGED):
                converged[pool][name] = verdict.clamps
            if alerted:
                alerts.append(_alert("resolved", pool, name, since or now, now,
                                     f"{name}: its GPU power limits match the power policy again", ""))
            status, since, alerted = verdict.status, None, False
        elif status != NOT_CONVERGED:
            if status != PENDING or since is None:
                status, since = PENDING, now  # caps just changed, the node drifted, or it reports again
            if (now - since).total_seconds() >= timeout:
                status, alerted = NOT_CONVERGED, True
                flagged[pool][name] = verdict.off
                alerts.append(_alert(
                    "firing", pool, name, since, now,
                    f"{name} (pool {pool}) has not applied its GPU power limits after {timeout} s",
                    "; ".join(f"GPU {o['gpu']}: wanted {_watts(o['desired_w'])}, enforced {_watts(o['reported_w'])}, "
                              f"agent applied {_watts(o['applied_w'])}" for o in verdict.off)))
        new_state = {"pool": pool, "status": status, "since": _iso(since) if since else None, "alerted": alerted}
        if new_state != {k: old.get(k) for k in new_state}:
            state_writes[name] = new_state
        result.status[name] = status

    present = {n for n, _, _ in nodes}
    gone = sorted((set(old_desired) | set(state) | set(applied)) - present)
    for name in gone:
        old = state.get(name) or {}
        if old.get("alerted"):
            alerts.append(_alert("resolved", str(old.get("pool") or ""), name, _since(old) or now, now,
                                 f"{name} is gone from the fleet", ""))

    origin = Origin.system(ACTOR)
    with transaction.atomic():
        for pool in sorted(changes):
            policy = schemas.for_pool(document, pool)
            listed = changes[pool]
            record(origin, "power.cap", f"pool:{pool}",
                   f"power policy v{rev.version} (revision {rev.pk}) for pool {pool}, {describe(policy, now)}: "
                   f"caps changed on {len(listed)} node(s)",
                   before=_listed({n: b for n, (b, _) in listed.items()}),
                   after=_listed({n: a for n, (_, a) in listed.items()}),
                   details={"revision": rev.pk, "version": rev.version, "mode": policy.get("mode"),
                            "nodes": len(listed)})
            result.audits += 1
        for pool in sorted(converged):
            done = converged[pool]
            clamped = {n: c for n, c in done.items() if c}
            note = f"; {len(clamped)} clamped by the board's limits" if clamped else ""
            record(origin, "power.converged", f"pool:{pool}",
                   f"{len(done)} node(s) of pool {pool} run the power caps of policy v{rev.version}{note}",
                   after=_listed(dict(done)), details={"revision": rev.pk, "version": rev.version,
                                                       "nodes": sorted(done), "clamped": _listed(clamped)})
            result.audits += 1
        for pool in sorted(flagged):
            off = flagged[pool]
            record(origin, "power.not_converged", f"pool:{pool}",
                   f"{len(off)} node(s) of pool {pool} have not applied the power caps of policy v{rev.version} "
                   f"within {CONVERGE_TIMEOUT_S} s (or three push intervals)", after=_listed(dict(off)),
                   details={"revision": rev.pk, "version": rev.version, "nodes": sorted(off)})
            result.audits += 1
        for i in range(0, len(alerts), ALERT_CHUNK):
            notify.send(alerts[i:i + ALERT_CHUNK])

    # After the audit commits: a crash in between repeats the audit next tick rather than leaving a silent change.
    pipe = redis_client().pipeline(transaction=False)
    for name, caps in desired_writes.items():
        pipe.hset(POWER_DESIRED_KEY, name, orjson.dumps(caps))
    for name, st in state_writes.items():
        pipe.hset(STATE_KEY, name, orjson.dumps(st))
    if gone:
        for key in (POWER_DESIRED_KEY, STATE_KEY):
            pipe.hdel(key, *gone)
    if desired_writes or state_writes or gone:
        pipe.execute()

    result.changed = {pool: sorted(listed) for pool, listed in changes.items()}
    result.removed = gone
    result.converged = sorted(n for done in converged.values() for n in done)
    result.not_converged = sorted(n for off in flagged.values() for n in off)
    if result.changed or result.not_converged:
        log.info("power: caps changed %s; not converged %s", result.changed, result.not_converged)
    return result


# -- energy and the page's summary ---------------------------------------------------------------------------

def energy_per_token(pool: str, window_s: int = 3600, now: datetime | None = None,
                     resolution: str | None = None) -> float | None:
    """Joules per generated token of `pool`'s nodes over (now - window_s, now]: the GPUs' energy counters'
    increase (per GPU; a counter that went down was reset, and its new value is what it counted since) divided by
    the tokens generated (each node's generation_tokens_s times the time since its previous sample). Raw samples
    for windows up to RAW_WINDOW_MAX_S, 1-minute rollups (the counter's highest value and the rate's average per
    minute) beyond; `resolution` ("raw" or "1m") overrides. None when no token was generated."""
    if window_s <= 0:
        raise ValueError(f"window_s must be above 0, got {window_s}")
    resolution = resolution or ("raw" if window_s <= RAW_WINDOW_MAX_S else "1m")
    if resolution not in ("raw", "1m"):
        raise ValueError(f"resolution must be 'raw' or '1m', got {resolution!r}")
    now = now or datetime.now(UTC)
    start = now - timedelta(seconds=window_s)
    raw = resolution == "raw"
    gpu_t, node_t = (schema.RAW_GPU, schema.RAW_NODE) if raw else (schema.GPU_1M, schema.NODE_1M)
    t = gpu_t.time_col
    energy = "energy_j" if raw else "energy_j_max"
    rate = "generation_tokens_s" if raw else "generation_tokens_s_avg"
    in_pool = "JOIN fleet_node n ON n.id = s.node_id JOIN fleet_pool p ON p.id = n.pool_id WHERE p.name = %s"
    energy_sql = (
        f"SELECT sum(CASE WHEN d >= 0 THEN d ELSE cur END) FROM ("
        f"SELECT s.{energy} AS cur, s.{energy} - lag(s.{energy}) OVER (PARTITION BY s.node_id, s.gpu ORDER BY s.{t}) "
        f"AS d FROM {gpu_t.name} s {in_pool} AND s.{t} > %s AND s.{t} <= %s AND s.{energy} IS NOT NULL) x "
        "WHERE d IS NOT NULL")
    tokens_sql = (
        f"SELECT sum(r * extract(epoch FROM at - prev)) FROM ("
        f"SELECT s.{rate} AS r, s.{t} AS at, lag(s.{t}) OVER (PARTITION BY s.node_id ORDER BY s.{t}) AS prev "
        f"FROM {node_t.name} s {in_pool} AND s.{t} > %s AND s.{t} <= %s) x WHERE prev IS NOT NULL AND r IS NOT NULL")
    # GPUs without an energy counter (older boards, some drivers) still report power: integrate it over the same
    # intervals the tokens are counted over, so "energy per token" shows whenever power and tokens were reported.
    power = "power_w" if raw else "power_w_avg"
    power_sql = (
        f"SELECT sum(w * extract(epoch FROM at - prev)) FROM ("
        f"SELECT s.{power} AS w, s.{t} AS at, lag(s.{t}) OVER (PARTITION BY s.node_id, s.gpu ORDER BY s.{t}) "
        f"AS prev FROM {gpu_t.name} s {in_pool} AND s.{t} > %s AND s.{t} <= %s AND s.{energy} IS NULL) x "
        "WHERE prev IS NOT NULL AND w IS NOT NULL")
    with connection.cursor() as cur:
        cur.execute(energy_sql, [pool, start, now])
        joules = cur.fetchone()[0]
        cur.execute(power_sql, [pool, start, now])
        from_power = cur.fetchone()[0]
        cur.execute(tokens_sql, [pool, start, now])
        tokens = cur.fetchone()[0]
    if from_power is not None:
        joules = float(from_power) + float(joules or 0.0)
    if joules is None or tokens is None or float(tokens) <= 0:
        return None
    return float(joules) / float(tokens)


# Windows tried in turn for the page's energy per token: the last hour from the minute rollups, else (a fleet that
# started minutes ago, or rollups that are behind) the last 15 minutes of raw samples.
ENERGY_WINDOWS = ((3600, "last 60 min"), (RAW_WINDOW_MAX_S, "last 15 min"))


def energy_per_token_shown(pool: str, now: datetime) -> tuple[float | None, str | None]:
    """(joules per token, the window it was computed over) for the first window with tokens and energy."""
    for window_s, label in ENERGY_WINDOWS:
        value = energy_per_token(pool, window_s, now)
        if value is not None:
            return value, label
    return None, None


def _energy_fields(pool: str, window_s: int, now: datetime) -> dict[str, Any]:
    if window_s == 3600:
        value, label = energy_per_token_shown(pool, now)
    else:  # a caller that asked for its own window gets exactly that one
        value = energy_per_token(pool, window_s, now)
        label = f"last {window_s // 60} min" if value is not None else None
    return {"energy_per_token_j": value, "energy_window": label}


def power_summary(now: datetime | None = None, window_s: int = 3600) -> list[dict[str, Any]]:
    """Per pool, for the scaling page: the policy's mode, the caps being asked for (lowest and highest), GPUs
    converged of those reporting, mean power draw now, nodes not converged, and energy per generated token."""
    now = now or datetime.now(UTC)
    document = schemas.validate("power", policies.active("power").document)
    desired, applied, state, latest = _read_redis()
    members: dict[str, list[str]] = defaultdict(list)
    for name, pool in Node.objects.exclude(state=Node.State.REMOVED).values_list("name", "pool__name"):
        members[pool].append(name)
    out = []
    for pool in Pool.objects.order_by("name").values_list("name", flat=True):
        policy = schemas.for_pool(document, pool)
        caps = [w for n in members[pool] for w in (desired.get(n) or {}).values()]
        ok = total = 0
        draws: list[float] = []
        for name in members[pool]:
            snap = latest.get(name)
            v = judge(desired.get(name) or {}, snap, applied.get(name) or {}, now)
            ok, total = ok + v.gpus_ok, total + v.gpus
            if v.status != UNKNOWN:
                draws += [w for g in _gpus(snap).values() if (w := _num(g.get("power_w"))) is not None]
        out.append({
            "pool": pool,
            "mode": policy.get("mode", "uncapped"),
            "cap_w": policy.get("cap_w"),
            "pct": policy.get("pct"),
            "peak_hours_utc": [policy.get("peak_start_hour"), policy.get("peak_end_hour")]
            if policy.get("mode") == "off_peak" else None,
            "in_peak": in_peak(policy, now) if policy.get("mode") == "off_peak" else None,
            "describe": describe(policy, now),
            "desired_w": {"min": min(caps), "max": max(caps)} if caps else None,
            "nodes": len(members[pool]),
            "gpus": total,
            "converged": ok,
            "nodes_not_converged": sorted(n for n in members[pool]
                                          if (state.get(n) or {}).get("status") == NOT_CONVERGED),
            "mean_power_w": round(sum(draws) / len(draws), 1) if draws else None,
            **_energy_fields(pool, window_s, now),
        })
    return out
