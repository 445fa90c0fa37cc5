"""Bulk writes of raw samples with COPY.

COPY cannot skip duplicates, so rows are copied into per-connection temporary staging tables and moved into the
partitioned tables with one INSERT .. ON CONFLICT DO NOTHING; the GPU rows of a replayed (duplicate) sample are
dropped in the same statement, so a replay never stores anything twice.
"""

from __future__ import annotations

import weakref
from collections.abc import Sequence
from typing import Any

from django.db import connection

from agents.catalogue import GPU_METRICS, NODE_METRICS
from dashboard.metrics.schema import RAW_GPU_COLUMNS, RAW_NODE_COLUMNS

# Raw connections that already have the staging tables. They are created outside any transaction (autocommit),
# so a rolled-back ingest cannot take them away; a closed connection takes them along, and leaves this set.
_staged: weakref.WeakSet[Any] = weakref.WeakSet()
_PG_TYPES = {"real": "float4", "double precision": "float8", "bigint": "int8", "smallint": "int2", "integer": "int4"}
# Binary COPY: no text formatting of each value in Python, which was the largest CPU cost of a push.
_NODE_TYPES = ["timestamptz", "int8", "int8"] + [_PG_TYPES[m.sql] for m in NODE_METRICS]
_GPU_TYPES = ["timestamptz", "int8", "int2", "int8"] + [_PG_TYPES[m.sql] for m in GPU_METRICS]

_STAGE_SQL = (
    "CREATE TEMP TABLE IF NOT EXISTS stage_node_sample (LIKE node_sample) ON COMMIT DELETE ROWS;"
    "CREATE TEMP TABLE IF NOT EXISTS stage_gpu_sample (LIKE gpu_sample) ON COMMIT DELETE ROWS;"
)
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
SELECT (SELECT count(*) FROM new), (SELECT count(*) FROM gpu)
"""


def ensure_staging() -> None:
    """Create this connection's staging tables once. Call outside a transaction (see _staged)."""
    connection.ensure_connection()
    raw = connection.connection
    if raw not in _staged:
        with connection.cursor() as cur:
            cur.execute(_STAGE_SQL)
        _staged.add(raw)


def copy_samples(node_rows: Sequence[Sequence[Any]], gpu_rows: Sequence[Sequence[Any]]) -> tuple[int, int]:
    """Store raw rows (in RAW_*_COLUMNS order) inside the caller's transaction. Returns (samples, GPU rows) new.

    Float columns must get floats (the validator converts), integer columns ints: binary COPY does not coerce.
    """
    with connection.cursor() as cur:
        with cur.copy(_COPY_NODE) as copy:
            copy.set_types(_NODE_TYPES)
            for row in node_rows:
                copy.write_row(row)
        if gpu_rows:
            with cur.copy(_COPY_GPU) as copy:
                copy.set_types(_GPU_TYPES)
                for row in gpu_rows:
                    copy.write_row(row)
        cur.execute(_MOVE_SQL)
        new_samples, new_gpu_rows = cur.fetchone()
    return int(new_samples), int(new_gpu_rows)
