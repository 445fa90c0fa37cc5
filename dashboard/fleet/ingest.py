"""The ingest service behind POST /api/v1/ingest: auth, limits, validation, storage, acknowledgement.

Everything here is synchronous and runs on a worker thread (see views.ingest), one request per thread, with the
thread's own persistent database connection. Nothing of a request is stored unless all of it is valid, and the
200 goes out only after the transaction has committed.
"""

from __future__ import annotations

import itertools
import json
import math
import time
import zlib
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, date, datetime, timedelta
from typing import Any

import orjson
import psycopg
from django.conf import settings
from django.db import DatabaseError, connection, transaction
from django.utils import timezone

from agents.catalogue import GPU_METRICS, HOST_METRICS, INFERENCE_METRICS
from core.tokens import digest
from dashboard.fleet.group_commit import Pending, committer
from dashboard.fleet.node_tokens import cache as token_cache
from dashboard.fleet.revocation import read_revocations
from dashboard.fleet.validation import Batch, Sample, validate
from dashboard.metrics.latest import redis_client

# How often a node row's last_seen is refreshed; the exact time of the last sample lives in Redis.
LAST_SEEN_RESOLUTION = timedelta(seconds=60)

# What the power controller (control/controller/power.py) wants of each node's GPUs, keyed by node name:
# {"<gpu index>": watts}; {} or no field: uncapped. What the agent applied travels back in its `applied` block,
# kept (checked) in the node's latest snapshot, where the controller reads it.
POWER_DESIRED_KEY = "sy:power:desired"
_MAX_GPU_INDEX = 255  # as the sample validation allows
_MAX_WATTS = 5000.0  # power_limit_w's catalogue range
_APPLIED_MAPS = ("power_limit_w", "power_asked_w", "power_default_w")


UNKNOWN_TOKEN = "unknown or revoked node token; issue one with python manage.py createnode NAME --pool P"


@dataclass
class Reply:
    status: int
    body: dict[str, Any]
    headers: dict[str, str] = field(default_factory=dict)


def error(status: int, message: str, fields: dict[str, str] | None = None, **headers: str) -> Reply:
    return Reply(status, {"error": message, "fields": fields or {}}, dict(headers))


@dataclass
class NodeInfo:
    id: int
    name: str
    pool: str
    state: str
    interval_s: int | None
    endpoint: str
    models: list[str]
    agent: str
    last_seen: datetime | None


_NODE_COLUMNS = "n.id, n.name, p.name, n.state, n.interval_s, n.endpoint, n.models, n.agent, n.last_seen"


def _node_info(row: tuple[Any, ...]) -> NodeInfo:
    models = row[6] if isinstance(row[6], list) else json.loads(row[6] or "[]")
    return NodeInfo(row[0], row[1], row[2], row[3], row[4], row[5], models, row[7], row[8])


def lookup_token(token: str) -> NodeInfo | None:
    return lookup_digest(digest(token))


def lookup_digest(dig: str) -> NodeInfo | None:
    with connection.cursor() as cur:
        cur.execute(
            f"SELECT {_NODE_COLUMNS} "
            "FROM fleet_nodetoken t JOIN fleet_node n ON n.id = t.node_id JOIN fleet_pool p ON p.id = n.pool_id "
            "WHERE t.digest = %s AND t.revoked IS NULL",
            [dig],
        )
        row = cur.fetchone()
    return None if row is None else _node_info(row)


_REFRESH_SQL = (f"SELECT {_NODE_COLUMNS} FROM fleet_node n JOIN fleet_pool p ON p.id = n.pool_id "
                "WHERE n.id = ANY(%s::bigint[])")


def refresh_nodes(nodes: list[NodeInfo]) -> None:
    """Re-read the nodes' current rows (one query for a commit's group) into their NodeInfo, which the token cache
    shares: an operator's change of state, interval or pool reaches the next push's reply. A node deleted meanwhile
    keeps what it had (its push then fails on its own, see group_commit)."""
    by_id: dict[int, list[NodeInfo]] = {}
    for n in nodes:
        by_id.setdefault(n.id, []).append(n)
    for row in fetch_prepared(_REFRESH_SQL, [list(by_id)]):
        fresh = _node_info(row)
        for n in by_id[fresh.id]:
            n.__dict__.update(fresh.__dict__)


_PREPARE_ONLY_WHEN_ASKED = 2**31 - 1


def fetch_prepared(sql: str, params: list[Any], rows: bool = True) -> list[tuple[Any, ...]]:
    """One query of every commit group, on a server-side-bound cursor with a prepared statement: Django's cursor
    binds parameters in Python and PostgreSQL parses and plans the text again each time, which cost more than the
    query itself at a few pushes a group. Errors are Django's, as for any other query."""
    connection.ensure_connection()
    raw = connection.connection
    if raw.prepare_threshold is None:
        # Django turns psycopg's prepared statements off on its connections (prepare_threshold None), and then
        # prepare=True is ignored: every group's query was parsed and planned again. An unreachable threshold
        # instead prepares only what asks for it (Django's own cursors bind client-side and never prepare).
        raw.prepare_threshold = _PREPARE_ONLY_WHEN_ASKED
    with connection.wrap_database_errors, psycopg.Cursor(raw) as cur:
        cur.execute(sql, params, prepare=True)
        return cur.fetchall() if rows else []


def decode_body(raw: bytes, encoding: str) -> bytes | Reply:
    limit = settings.INGEST_MAX_BYTES
    encoding = encoding.strip().lower()
    if encoding in ("", "identity"):
        return raw
    if encoding != "gzip":
        return error(415, f"Content-Encoding {encoding!r} is not supported; send gzip or nothing")
    # Bounded inflate: a small gzip bomb must not expand into gigabytes in memory.
    inflater = zlib.decompressobj(16 + zlib.MAX_WBITS)
    try:
        out = inflater.decompress(raw, limit + 1)
    except zlib.error as exc:
        return error(400, f"the body is not valid gzip ({exc})")
    if len(out) > limit or inflater.unconsumed_tail:
        return error(413, f"the body inflates to more than {limit} bytes; send fewer samples per request")
    if not inflater.eof:
        return error(400, "the gzip body is truncated")
    return out


def parse_json(body: bytes) -> Any | Reply:
    try:
        return orjson.loads(body)
    except orjson.JSONDecodeError:
        pass
    # orjson refuses NaN and Infinity; the standard parser reads them so that validation can name the field.
    try:
        return json.loads(body)
    except (ValueError, RecursionError) as exc:
        return error(400, f"the body is not valid JSON: {exc}")


@dataclass
class NodeRedis:
    """What a push learns from its one Redis round trip."""

    limited: Reply | None  # 429 when the node pushes too often
    power_limit_w: dict[str, float]  # the controller's caps for the node's GPUs
    revocations: bytes | None  # the revocation counter (dashboard/fleet/revocation.py), for the token cache


def rate_key(minute: int) -> str:
    """The rate-limit counts of one clock minute: a hash of node id to pushes, so that a commit group counts each of
    its pushes with one command and sets the expiry once."""
    return f"sy:rl:ingest:{minute}"


def redis_round(node: NodeInfo) -> NodeRedis:
    """Count the push against the node's rate limit, read the power controller's caps for the node and the token
    revocation counter, in one pipeline: the hottest path in the system gets no extra round trip for power capping
    or for trusting its cached token. (A push authenticated on the event loop has it made by its group: admit.)"""
    limit = settings.INGEST_RATE_PER_MINUTE
    now = time.time()
    key = rate_key(int(now // 60))
    pipe = redis_client().pipeline(transaction=False)
    pipe.hincrby(key, str(node.id), 1)
    pipe.expire(key, 120)
    pipe.hget(POWER_DESIRED_KEY, node.name)
    read_revocations(pipe)
    count, _, desired_raw, _, revocations = pipe.execute()
    return NodeRedis(_limited(now) if count > limit else None, watts_map(_loads(desired_raw)), revocations)


def _loads(raw: bytes | None) -> dict[str, Any] | None:
    if raw is None:
        return None
    try:
        doc = orjson.loads(raw)
    except orjson.JSONDecodeError:
        return None
    return doc if isinstance(doc, dict) else None


def watts_map(raw: Any) -> dict[str, float]:
    """{"<gpu index>": watts} with only what makes sense in it: GPU indices 0-255, finite watts in (0, 5000].
    Reads at most 256 entries, so a hostile map costs no more than a real one."""
    if not isinstance(raw, dict):
        return {}
    out: dict[str, float] = {}
    for key, value in itertools.islice(raw.items(), _MAX_GPU_INDEX + 1):
        if not (isinstance(key, str) and key.isascii() and key.isdigit() and int(key) <= _MAX_GPU_INDEX):
            continue
        if isinstance(value, bool) or not isinstance(value, int | float):
            continue
        watts = float(value)
        if math.isfinite(watts) and 0 < watts <= _MAX_WATTS:
            out[str(int(key))] = watts
    return out


def clean_applied(raw: dict[str, Any] | None) -> dict[str, Any]:
    """The agent's `applied` block reduced to what the controller reads, each value checked: anything else in it
    (wrong types, unknown keys, out-of-range numbers) is dropped, never stored."""
    if not isinstance(raw, dict):
        return {}
    out: dict[str, Any] = {}
    interval = raw.get("interval_s")
    if type(interval) is int and 1 <= interval <= 300:
        out["interval_s"] = interval
    for key in _APPLIED_MAPS:
        watts = watts_map(raw.get(key))
        if watts:
            out[key] = watts
    return out


def desired_for(node: NodeInfo, power_limit_w: dict[str, float] | None = None) -> dict[str, Any]:
    # interval_s is null unless an operator set one for the node: the agent then keeps its own --interval.
    # power_limit_w is the whole wish for the node's GPUs: a GPU left out is uncapped.
    return {
        "interval_s": node.interval_s,
        "state": node.state,
        "power_limit_w": power_limit_w or {},
    }


@dataclass
class Pusher:
    """An authenticated push, before its body is read: the node and what its Redis round trip said."""

    node: NodeInfo
    power_limit_w: dict[str, float]
    # (digest, revocation tag) of a token taken from the cache on the event loop with no Redis round trip yet:
    # the committer makes it for the push's whole group (admit), before anything of the group is stored.
    unchecked: tuple[str, bytes | None] | None = None
    # Its cache entry was past its TTL: the group looks the token up again (one query for all such) before storing.
    recheck: bool = False


# The last rate-limit count Redis gave this process for each node: (minute, count). The event loop refuses a push
# over the limit from it before reading its body; the committer's group round trip counts every push (admit).
_rate_seen: dict[int, tuple[int, int]] = {}
# Nodes of pushes authenticated from the cache and refused for their body (400, 403, 413, 415) before their group's
# round trip: still counted against the rate limit there, as every push is (committer thread only).
_refused_unchecked: list[NodeInfo] = []


def from_cache(token: str) -> Pusher | Reply | None:
    """A push authenticated from this process's token cache with no I/O (the event loop calls it): a Pusher whose
    Redis round trip is left to its commit group, 429 when the last count Redis gave for its node is at the limit
    already, or None when the token is not cached (then `authenticate` on a thread)."""
    dig = digest(token)
    cached = token_cache.get_any(dig)
    if cached is None:
        return None
    node, tag, expired = cached
    now = time.time()
    seen = _rate_seen.get(node.id)
    if seen is not None and seen[0] == int(now // 60) and seen[1] >= settings.INGEST_RATE_PER_MINUTE:
        return _limited(now)
    if seen is None and settings.INGEST_RATE_PER_MINUTE <= 0:
        return _limited(now)
    return Pusher(node, {}, unchecked=(dig, tag), recheck=expired)


_RECHECK_SQL = (f"SELECT t.digest, {_NODE_COLUMNS} FROM fleet_nodetoken t JOIN fleet_node n ON n.id = t.node_id "
                "JOIN fleet_pool p ON p.id = n.pool_id WHERE t.digest = ANY(%s::text[]) AND t.revoked IS NULL")


def lookup_digests(digests: list[str]) -> dict[str, NodeInfo]:
    """lookup_digest for several tokens in one (prepared) query: the valid ones, by digest."""
    return {row[0]: _node_info(row[1:]) for row in fetch_prepared(_RECHECK_SQL, [digests])}


def _limited(now: float) -> Reply:
    limit = settings.INGEST_RATE_PER_MINUTE
    retry = max(1, 60 - int(now % 60))
    return error(429, f"more than {limit} pushes this minute for this node; retry in {retry} s",
                 **{"Retry-After": str(retry)})


def admit(group: list[Pending]) -> list[Pending]:
    """The Redis round trip of the group's pushes authenticated from the cache (Pusher.unchecked), one pipeline
    for the group instead of one per push: each push counted against its node's rate limit, the power caps of the
    group's nodes, and the revocation counter. A push over the limit (429) or whose token was revoked since it was
    cached (401) is answered and left out; the others go on to the commit. Pushes from the cache refused for their
    body since the last round trip are counted in it too. Runs on the committer thread."""
    todo = [p for p in group if p.pusher is not None and p.pusher.unchecked is not None]
    refused_nodes = _refused_unchecked[:]
    _refused_unchecked.clear()
    if not todo and not refused_nodes:
        return group
    now = time.time()
    minute = int(now // 60)
    key = rate_key(minute)
    pipe = redis_client().pipeline(transaction=False)
    for node in refused_nodes:
        pipe.hincrby(key, str(node.id), 1)
    for p in todo:
        pipe.hincrby(key, str(p.node.id), 1)
    pipe.expire(key, 120)
    names = list(dict.fromkeys(p.node.name for p in todo))
    if todo:
        pipe.hmget(POWER_DESIRED_KEY, names)
        read_revocations(pipe)
    replies = pipe.execute()
    for i, node in enumerate(refused_nodes):
        _rate_seen[node.id] = (minute, replies[i])
    if not todo:
        return group
    replies = replies[len(refused_nodes):]
    caps = dict(zip(names, replies[len(todo) + 1], strict=True))
    revocations = replies[-1]
    # Tokens whose cache entries expired, asked about in one query after the counter was read (so the tag put
    # with the answer is older than the lookup, as authenticate's).
    expired = [p.pusher.unchecked[0] for p in todo if p.pusher is not None and p.pusher.recheck
               and p.pusher.unchecked is not None]
    try:
        valid = lookup_digests(list(dict.fromkeys(expired))) if expired else {}
    except DatabaseError:
        connection.close()  # the group gets the error (503); the next group reconnects, as after a failed commit
        raise
    refused: set[int] = set()
    for p, count in zip(todo, replies[:len(todo)], strict=True):
        pusher = p.pusher
        assert pusher is not None and pusher.unchecked is not None
        _rate_seen[p.node.id] = (minute, count)
        dig, tag = pusher.unchecked
        if pusher.recheck:
            fresh = valid.get(dig)
            if fresh is None or fresh.id != p.node.id:  # revoked or deleted meanwhile (or moved: refused too)
                token_cache.drop(dig)
                p.refused = error(401, UNKNOWN_TOKEN)
                refused.add(id(p))
                p.finish()
                continue
            token_cache.put(dig, p.node, revocations)  # the node's fields are refreshed by the commit
            tag = revocations
        rround = NodeRedis(_limited(now) if count > settings.INGEST_RATE_PER_MINUTE else None,
                           watts_map(_loads(caps[p.node.name])), revocations)
        result = settle(dig, p.node, True, tag, rround)
        if isinstance(result, Reply):
            p.refused = result
            refused.add(id(p))
            p.finish()
            continue
        pusher.power_limit_w = result.power_limit_w
        pusher.unchecked = None
    if len(_rate_seen) > 100_000:  # a fleet's worth (as the token cache): forget, never grow without bound
        _rate_seen.clear()
    return [p for p in group if id(p) not in refused]


def authenticate(token: str | None) -> Pusher | Reply:
    """Everything that needs only the headers, done before a byte of the body is read: the token (401) and the
    node's rate limit (429). An unauthenticated client therefore holds neither memory nor an ingest thread."""
    if not token:
        return error(401, "missing node token: send 'Authorization: Bearer <token>' (python manage.py createnode)")
    dig = digest(token)
    cached = token_cache.get(dig)
    if cached is None:
        # The counter is read before the lookup: a revocation that commits after the lookup raises it, and the
        # next push then asks again (see node_tokens).
        tag = read_revocations(redis_client().pipeline(transaction=False)).execute()[-1]
        node = lookup_digest(dig)
        if node is None:
            return error(401, UNKNOWN_TOKEN)
        token_cache.put(dig, node, tag)
    else:
        node, tag = cached
    return settle(dig, node, cached is not None, tag, redis_round(node))


def settle(dig: str, node: NodeInfo, cached: bool, tag: bytes | None, rround: NodeRedis) -> Pusher | Reply:
    """The push's standing after its Redis round trip: a cached token revoked since (401), the rate limit (429).
    Asks the database only when some token was revoked since this one was cached (see needs_lookup)."""
    if needs_lookup(cached, tag, rround):
        # Some token was revoked since this one was cached: ask the database (the counter just read is older
        # than this lookup, so it is the right tag). The rate limit was counted for the same node either way.
        token_cache.drop(dig)
        fresh = lookup_digest(dig)
        if fresh is None:
            return error(401, UNKNOWN_TOKEN)
        node = fresh
        token_cache.put(dig, node, rround.revocations)
    if rround.limited is not None:
        return rround.limited
    return Pusher(node, rround.power_limit_w)


def needs_lookup(cached: bool, tag: bytes | None, rround: NodeRedis) -> bool:
    return cached and rround.revocations != tag


def handle(pusher: Pusher, raw: bytes, encoding: str) -> Reply:
    """The body of an authenticated push: decode, check, store, acknowledge (on the calling thread)."""
    prepared = prepare(pusher, raw, encoding)
    if isinstance(prepared, Reply):
        return prepared
    committer.submit(prepared)
    return answer(pusher, prepared)


def prepare(pusher: Pusher, raw: bytes, encoding: str) -> Pending | Reply:
    """Decode and check the body; its rows ready for the committer, or the reply that refuses it. No I/O."""
    node = pusher.node
    body = decode_body(raw, encoding)
    if isinstance(body, Reply):
        return body
    doc = parse_json(body)
    if isinstance(doc, Reply):
        return doc
    if isinstance(doc, dict) and isinstance(doc.get("node"), str) and doc["node"] != node.name:
        return error(403, f"this token belongs to node {node.name!r}, not {doc['node'][:63]!r}",
                     {"node": f"{doc['node'][:63]!r} does not match the token's node {node.name!r}"})
    now = datetime.now(UTC)
    oldest = now - timedelta(days=settings.RETENTION_RAW_DAYS)
    batch, errors = validate(doc, now, oldest, settings.INGEST_MAX_SAMPLES)
    if batch is None:
        return error(errors.status, errors.summary(), errors.fields)
    p = pending(node, batch, now)
    p.pusher = pusher
    return p


def answer(pusher: Pusher, p: Pending) -> Reply:
    """The 200 of a committed push."""
    body_out: dict[str, Any] = {
        "accepted": p.accepted,
        "duplicates": len(p.batch.samples) - p.accepted,
        "desired": desired_for(p.node, pusher.power_limit_w),
    }
    if p.batch.ignored:
        body_out["ignored"] = sorted(p.batch.ignored)[:20]
    return Reply(200, body_out)


@dataclass
class Incoming:
    """A push handed to the committer straight from the event loop (ingest_asgi): the committer thread checks it,
    stores it with its group and calls `resolve` once with its Reply, or with the exception it hit."""

    pusher: Pusher
    raw: bytes
    encoding: str
    resolve: Callable[[Reply | BaseException], None]

    def prepare(self) -> Pending | None:
        """Its rows for the commit, or None when it was answered already (refused, or the check failed)."""
        try:
            prepared = prepare(self.pusher, self.raw, self.encoding)
        except Exception as exc:  # noqa: BLE001 - reported to this push alone, as on its own thread
            self.resolve(exc)
            return None
        if isinstance(prepared, Reply):
            if self.pusher.unchecked is not None:
                _refused_unchecked.append(self.pusher.node)
            self.resolve(prepared)
            return None
        prepared.on_done = self._committed
        return prepared

    def _committed(self, p: Pending) -> None:
        if p.refused is not None:
            self.resolve(p.refused)
        else:
            self.resolve(p.error if p.error is not None else answer(self.pusher, p))


def store(node: NodeInfo, batch: Batch, now: datetime) -> int:
    """Hand the push's rows to this process's committer (dashboard/fleet/group_commit.py) and wait until they are
    committed, together with whatever other pushes arrived meanwhile. Returns the samples that were new."""
    return committer.submit(pending(node, batch, now))


def pending(node: NodeInfo, batch: Batch, now: datetime) -> Pending:
    """The push's rows, ready for COPY."""
    node_rows: list[list[Any]] = []
    gpu_rows: list[list[Any]] = []
    seen_seq: set[int] = set()
    days: set[date] = set()
    for s in batch.samples:
        if s.seq in seen_seq:
            continue  # the same seq twice in one batch counts as a duplicate, like a replay
        seen_seq.add(s.seq)
        days.add(s.ts.date())
        node_rows.append([s.ts, node.id, s.seq, *s.host_inference])
        for g in s.gpus:
            gpu_rows.append([s.ts, node.id, g.index, s.seq, *g.values])
    newest = max(batch.samples, key=lambda s: s.ts)
    return Pending(node, batch, now, node_rows, gpu_rows, days, snapshot(node, batch, newest),
                   sample_minutes(batch))


def sample_minutes(batch: Batch) -> set[int]:
    """The minutes (epoch seconds) of the batch's samples. Those that had ended when it committed are flagged for
    the rollups (dashboard/metrics/rollups.py): a rollup may already have run for them, so the next one must redo
    them. All of the batch, duplicates too: a push retried because its flags were lost flags them again."""
    return {int(s.ts.timestamp()) // 60 * 60 for s in batch.samples}


def update_nodes(pushes: list[tuple[NodeInfo, Batch, datetime]]) -> None:
    """Bring the nodes' rows up to date with a commit's group of pushes: a changed endpoint, model list or agent
    version (rare: one UPDATE each), last_seen once a LAST_SEEN_RESOLUTION (one UPDATE for the group), and GPUs
    reporting for the first time or with a new uuid/name (one upsert for the group)."""
    seen: dict[int, datetime] = {}
    for node, batch, now in pushes:
        changes: dict[str, Any] = {}
        if batch.endpoint is not None and batch.endpoint != node.endpoint:
            changes["endpoint"] = batch.endpoint
        if batch.models is not None and batch.models != node.models:
            changes["models"] = json.dumps(batch.models)
        if batch.agent and batch.agent != node.agent:
            changes["agent"] = batch.agent
        if changes:
            changes["last_seen"] = now
            sets = ", ".join(f"{k} = %s" for k in changes)
            with connection.cursor() as cur:
                cur.execute(f"UPDATE fleet_node SET {sets} WHERE id = %s", [*changes.values(), node.id])
        elif node.last_seen is None or now - node.last_seen > LAST_SEEN_RESOLUTION:
            seen[node.id] = now
    if seen:
        fetch_prepared("UPDATE fleet_node n SET last_seen = u.ts FROM unnest(%s::bigint[], %s::timestamptz[]) "
                       "AS u(id, ts) WHERE n.id = u.id", [list(seen), list(seen.values())], rows=False)
    upsert_gpus(pushes)


_known_gpus: dict[tuple[int, int], tuple[str, str]] = {}


def upsert_gpus(pushes: list[tuple[NodeInfo, Batch, datetime]]) -> None:
    """Register GPUs the first time they report (or when their uuid/name change); a cache skips the rest."""
    fresh: dict[tuple[int, int], tuple[str, str, datetime]] = {}
    for node, batch, now in pushes:
        for s in batch.samples:
            for g in s.gpus:
                if _known_gpus.get((node.id, g.index)) != (g.uuid, g.name):
                    fresh[(node.id, g.index)] = (g.uuid, g.name, now)
    if not fresh:
        return
    with connection.cursor() as cur:
        cur.execute(
            "INSERT INTO fleet_gpu (node_id, index, uuid, name, first_seen) "
            "SELECT * FROM unnest(%s::bigint[], %s::int[], %s::text[], %s::text[], %s::timestamptz[]) "
            "ON CONFLICT (node_id, index) DO UPDATE SET uuid = EXCLUDED.uuid, name = EXCLUDED.name",
            [[k[0] for k in fresh], [k[1] for k in fresh], [v[0] for v in fresh.values()],
             [v[1] for v in fresh.values()], [v[2] for v in fresh.values()]],
        )
    transaction.on_commit(lambda: _known_gpus.update({k: v[:2] for k, v in fresh.items()}))


_HOST = [m.name for m in HOST_METRICS]
_INFERENCE = [m.name for m in INFERENCE_METRICS]
_GPU = [m.name for m in GPU_METRICS]


def snapshot(node: NodeInfo, batch: Batch, newest: Sample) -> dict[str, Any]:
    """The node's latest state as the live view and the scheduler read it (validated values only)."""
    values = newest.host_inference
    return {
        "node": node.name,
        "pool": node.pool,
        "state": node.state,
        "ts": newest.ts.isoformat(),
        "seq": newest.seq,
        "received": timezone.now().isoformat(),
        "endpoint": batch.endpoint if batch.endpoint is not None else node.endpoint,
        "models": batch.models if batch.models is not None else node.models,
        "serving": batch.serving,
        "applied": clean_applied(batch.applied),
        "host": dict(zip(_HOST, values[: len(_HOST)], strict=True)),
        "inference": dict(zip(_INFERENCE, values[len(_HOST):], strict=True)),
        # A GPU object that holds exactly its row (validation's as_sent) is the snapshot's as it came: building the
        # same dict again cost more than the rest of the snapshot.
        "gpus": [
            g.as_sent if g.as_sent is not None else
            {"index": g.index, "uuid": g.uuid, "name": g.name, **dict(zip(_GPU, g.values, strict=True))}
            for g in newest.gpus
        ],
    }
