"""Bulk writes of raw samples with COPY.

COPY cannot skip duplicates, so rows are copied into per-connection temporary staging tables and moved into the
partitioned tables with one INSERT .. ON CONFLICT DO NOTHING; the GPU rows of a replayed (duplicate) sample are
dropped in the same statement, so a replay never stores anything twice.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from django.db import connection

from dashboard.metrics.schema import RAW_GPU_COLUMNS, RAW_NODE_COLUMNS

_STAGE_SQL = (
    "CREATE TEMP TABLE IF NOT EXISTS stage_node_sample (LIKE node_sample) ON COMMIT DELETE ROWS;"
    "CREATE TEMP TABLE IF NOT EXISTS stage_gpu_sample (LIKE gpu_sample) ON COMMIT DELETE ROWS;"
)
_COPY_NODE = f"COPY stage_node_sample ({', '.join(RAW_NODE_COLUMNS)}) FROM STDIN"
_COPY_GPU = f"COPY stage_gpu_sample ({', '.join(RAW_GPU_COLUMNS)}) FROM STDIN"
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


def copy_samples(node_rows: Sequence[Sequence[Any]], gpu_rows: Sequence[Sequence[Any]]) -> tuple[int, int]:
    """Store raw rows (in RAW_*_COLUMNS order) inside the caller's transaction. Returns (samples, GPU rows) new."""
    with connection.cursor() as cur:
        # IF NOT EXISTS every time (a catalog lookup, not a create): remembering it per connection would go wrong
        # when the transaction that created the tables rolls back.
        cur.execute(_STAGE_SQL)
        with cur.copy(_COPY_NODE) as copy:
            for row in node_rows:
                copy.write_row(row)
        if gpu_rows:
            with cur.copy(_COPY_GPU) as copy:
                for row in gpu_rows:
                    copy.write_row(row)
        cur.execute(_MOVE_SQL)
        new_samples, new_gpu_rows = cur.fetchone()
    return int(new_samples), int(new_gpu_rows)
