"""Bulk writes of raw samples with COPY.

Fast path: COPY straight into the partitioned tables. The unique (node_id, seq, ts) index of node_sample refuses
a replayed sample, and then the whole transaction is redone on the slow path: COPY into per-connection temporary
staging tables and one INSERT .. ON CONFLICT DO NOTHING that also drops the GPU rows of the duplicates. Replays
are rare (an agent back from an outage whose last push was stored but not acknowledged), so nearly every push
costs two COPYs and a commit.
"""

from __future__ import annotations

import weakref
from collections.abc import Sequence
from typing import Any

from django.db import connection
from psycopg import postgres

from agents.catalogue import GPU_METRICS, NODE_METRICS
from dashboard.metrics.schema import RAW_GPU_COLUMNS, RAW_NODE_COLUMNS

# Raw connections that already have the staging tables. They are created outside any transaction (autocommit),
# so a rolled-back ingest cannot take them away; a closed connection takes them along, and leaves this set.
_staged: weakref.WeakSet[Any] = weakref.WeakSet()
_PG_TYPES = {"real": "float4", "double precision": "float8", "bigint": "int8", "smallint": "int2", "integer": "int4"}
# Binary COPY: no text formatting of each value in Python, which was the largest CPU cost of a push.
# As oids, resolved once: given names, set_types looks each up in the connection's type registry on every COPY,
# which cost more than writing a group's rows (the built-in types' oids are fixed).
_NODE_TYPES = [postgres.types[t].oid for t in ["timestamptz", "int8", "int8"] + [_PG_TYPES[m.sql] for m in NODE_METRICS]]
_GPU_TYPES = [postgres.types[t].oid
              for t in ["timestamptz", "int8", "int2", "int8"] + [_PG_TYPES[m.sql] for m in GPU_METRICS]]

_STAGE_SQL = (
    "CREATE TEMP TABLE IF NOT EXISTS stage_node_sample (LIKE node_sample) ON COMMIT DELETE ROWS;"
    "CREATE TEMP TABLE IF NOT EXISTS stage_gpu_sample (LIKE gpu_sample) ON COMMIT DELETE ROWS;"
)
_COPY_NODE_DIRECT = f"COPY node_sample ({', '.join(RAW_NODE_COLUMNS)}) FROM STDIN (FORMAT BINARY)"
_COPY_GPU_DIRECT = f"COPY gpu_sample ({', '.join(RAW_GPU_COLUMNS)}) FROM STDIN (FORMAT BINARY)"
_COPY_NODE = f"COPY stage_node_sample ({', '.join(RAW_NODE_COLUMNS)}) FROM STDIN (FORMAT BINARY)"
_COPY_GPU = f"COPY stage_gpu_sample ({', '.join(RAW_GPU_COLUMNS)}) FROM STDIN (FORMAT BINARY)"
_MOVE_SQL = f"""
WITH new AS (
    INSERT INTO node_sample ({', '.join(RAW_NODE_COLUMNS)})
    SELECT {', '.join(RAW_NODE_COLUMNS)} FROM stage_node_sample
    ON CONFLICT DO NOTHING
    RETURNING node_id, seq, ts
), gpu AS (
    INSERT INTO gpu_sample ({', '.join(RAW_GPU_COLUMNS)})
    SELECT {', '.join('g.' + c for c in RAW_GPU_COLUMNS)}
    FROM stage_gpu_sample g JOIN new USING (node_id, seq, ts)
    RETURNING 1
)
SELECT node_id, seq, ts FROM new
"""  # the gpu CTE runs to completion though the SELECT does not read it (PostgreSQL runs every data-modifying CTE)


def ensure_staging() -> None:
    """Create this connection's staging tables once. Call outside a transaction (see _staged)."""
    connection.ensure_connection()
    raw = connection.connection
    if raw not in _staged:
        with connection.cursor() as cur:
            cur.execute(_STAGE_SQL)
        _staged.add(raw)


def _copy(cur: Any, sql: str, types: list[int], rows: Sequence[Sequence[Any]]) -> None:
    # cursor.copy() reaches psycopg directly, past Django's error translation: translate here, so callers
    # catch django.db.IntegrityError / DatabaseError as for any other query.
    with connection.wrap_database_errors, cur.copy(sql) as copy:
        copy.set_types(types)
        for row in rows:
            copy.write_row(row)


def copy_direct(node_rows: Sequence[Sequence[Any]], gpu_rows: Sequence[Sequence[Any]]) -> int:
    """Fast path, inside the caller's transaction. Raises IntegrityError when a sample is already stored."""
    with connection.cursor() as cur:
        _copy(cur, _COPY_NODE_DIRECT, _NODE_TYPES, node_rows)
        if gpu_rows:
            _copy(cur, _COPY_GPU_DIRECT, _GPU_TYPES, gpu_rows)
    return len(node_rows)


def copy_deduplicated(node_rows: Sequence[Sequence[Any]], gpu_rows: Sequence[Sequence[Any]]) -> int:
    """Slow path, inside the caller's transaction (call ensure_staging() before it). Returns new samples."""
    return len(copy_deduplicated_keys(node_rows, gpu_rows))


def copy_deduplicated_keys(node_rows: Sequence[Sequence[Any]], gpu_rows: Sequence[Sequence[Any]]
                           ) -> list[tuple[int, int, Any]]:
    """copy_deduplicated, returning the (node_id, seq, ts) of the samples that were new: a group commit credits
    each push with its own."""
    with connection.cursor() as cur:
        _copy(cur, _COPY_NODE, _NODE_TYPES, node_rows)
        if gpu_rows:
            _copy(cur, _COPY_GPU, _GPU_TYPES, gpu_rows)
        cur.execute(_MOVE_SQL)
        return [tuple(r) for r in cur.fetchall()]
