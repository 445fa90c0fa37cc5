"""Sample and rollup tables: wide rows, one column per catalogue metric, range-partitioned by time.

Tables (all partitioned by range on their time column):
  gpu_sample(ts, node_id, gpu, seq, <GPU metrics>)          raw, one partition per day
  node_sample(ts, node_id, seq, <host + inference metrics>)  raw, one partition per day
  gpu_sample_1m / node_sample_1m (bucket, node_id, [gpu,] n, <metric>_avg, <metric>_max)  one partition per day
  gpu_sample_1h / node_sample_1h                                                         one partition per month
Each partition gets a B-tree on (node_id[, gpu], time) for drill-down and a BRIN on time for fleet-wide scans.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, date, datetime, timedelta

from agents.catalogue import GPU_METRICS, NODE_METRICS, Metric


@dataclass(frozen=True)
class Table:
    name: str
    metrics: tuple[Metric, ...]
    per_gpu: bool
    resolution: str  # "raw", "1m" or "1h"

    @property
    def time_col(self) -> str:
        return "ts" if self.resolution == "raw" else "bucket"

    @property
    def key_cols(self) -> tuple[str, ...]:
        return ("node_id", "gpu") if self.per_gpu else ("node_id",)

    @property
    def monthly(self) -> bool:
        return self.resolution == "1h"


RAW_GPU = Table("gpu_sample", GPU_METRICS, True, "raw")
RAW_NODE = Table("node_sample", NODE_METRICS, False, "raw")
GPU_1M = Table("gpu_sample_1m", GPU_METRICS, True, "1m")
NODE_1M = Table("node_sample_1m", NODE_METRICS, False, "1m")
GPU_1H = Table("gpu_sample_1h", GPU_METRICS, True, "1h")
NODE_1H = Table("node_sample_1h", NODE_METRICS, False, "1h")
ALL_TABLES = (RAW_GPU, RAW_NODE, GPU_1M, NODE_1M, GPU_1H, NODE_1H)
ROLLUPS = {("gpu", "1m"): GPU_1M, ("node", "1m"): NODE_1M, ("gpu", "1h"): GPU_1H, ("node", "1h"): NODE_1H}

# Column order of the raw tables, which is also the COPY order on ingest.
RAW_GPU_COLUMNS: tuple[str, ...] = ("ts", "node_id", "gpu", "seq") + tuple(m.name for m in GPU_METRICS)
RAW_NODE_COLUMNS: tuple[str, ...] = ("ts", "node_id", "seq") + tuple(m.name for m in NODE_METRICS)


def create_sql(table: Table) -> str:
    if table.resolution == "raw":
        cols = [
            "ts timestamptz NOT NULL",
            "node_id bigint NOT NULL",
            *(["gpu smallint NOT NULL"] if table.per_gpu else []),
            "seq bigint NOT NULL",
            *(f"{m.name} {m.sql}" for m in table.metrics),
        ]
    else:
        cols = [
            "bucket timestamptz NOT NULL",
            "node_id bigint NOT NULL",
            *(["gpu smallint NOT NULL"] if table.per_gpu else []),
            "n integer NOT NULL",
        ]
        for m in table.metrics:
            cols.append(f"{m.name}_avg double precision")
            cols.append(f"{m.name}_max {m.sql}")
    key = f"{', '.join(table.key_cols)}, {table.time_col}"
    constraints, indexes = "", ""
    if table.resolution != "raw":
        constraints = f",\n  UNIQUE ({key})"  # the upsert target of the rollup, and the drill-down index
    else:
        indexes = f"CREATE INDEX IF NOT EXISTS {table.name}_key_time ON {table.name} ({key});\n"
    if table is RAW_NODE:
        # The (node, seq) dedupe key. ts is in it because a unique index on a partitioned table must hold the
        # partition key; a replayed sample repeats its ts, so this still catches every replay.
        constraints = ",\n  UNIQUE (node_id, seq, ts)"
    return (
        f"CREATE TABLE IF NOT EXISTS {table.name} (\n  " + ",\n  ".join(cols) + f"{constraints}\n)"
        f" PARTITION BY RANGE ({table.time_col});\n"
        + indexes
        + f"CREATE INDEX IF NOT EXISTS {table.name}_brin ON {table.name} USING brin ({table.time_col});\n"
    )


def drop_sql(table: Table) -> str:
    return f"DROP TABLE IF EXISTS {table.name} CASCADE;"


def partition_bounds(table: Table, day: date) -> tuple[str, datetime, datetime]:
    """(partition name, lower bound, upper bound) of the partition holding `day`."""
    if table.monthly:
        lo = datetime(day.year, day.month, 1, tzinfo=UTC)
        hi = datetime(day.year + (day.month == 12), day.month % 12 + 1, 1, tzinfo=UTC)
        return f"{table.name}_p{lo:%Y%m}", lo, hi
    lo = datetime(day.year, day.month, day.day, tzinfo=UTC)
    return f"{table.name}_p{lo:%Y%m%d}", lo, lo + timedelta(days=1)


def partition_sql(table: Table, day: date) -> str:
    name, lo, hi = partition_bounds(table, day)
    return (
        f"CREATE TABLE IF NOT EXISTS {name} PARTITION OF {table.name} "
        f"FOR VALUES FROM ('{lo.isoformat()}') TO ('{hi.isoformat()}')"
    )


def parse_partition(table: Table, name: str) -> tuple[datetime, datetime] | None:
    """Bounds of a partition from its name, or None if the name is not one of ours."""
    prefix = f"{table.name}_p"
    suffix = name[len(prefix):]
    if not name.startswith(prefix) or not suffix.isdigit():
        return None
    try:
        if table.monthly and len(suffix) == 6:
            day = datetime.strptime(suffix, "%Y%m").date()
        elif not table.monthly and len(suffix) == 8:
            day = datetime.strptime(suffix, "%Y%m%d").date()
        else:
            return None
    except ValueError:
        return None
    _, lo, hi = partition_bounds(table, day)
    return lo, hi
