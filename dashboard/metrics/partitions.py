"""Partition upkeep: create daily/monthly partitions ahead of time, drop whole partitions past retention."""

from __future__ import annotations

import logging
from datetime import UTC, date, datetime, timedelta

from django.conf import settings
from django.db import connection

from dashboard.metrics import fleet_rollup, schema

log = logging.getLogger(__name__)

# Days whose partitions this process has already made sure of, so ingest checks a set, not the catalog.
_known_days: set[date] = set()


def ensure_partitions(start: date | None = None, days_ahead: int | None = None) -> list[str]:
    """Create every table's partitions for `start` .. `start + days_ahead` (idempotent). Returns the names."""
    start = start or datetime.now(UTC).date()
    days_ahead = settings.PARTITIONS_AHEAD_DAYS if days_ahead is None else days_ahead
    names: list[str] = []
    with connection.cursor() as cur:
        for offset in range(days_ahead + 1):
            day = start + timedelta(days=offset)
            for table in schema.ALL_TABLES:
                cur.execute(schema.partition_sql(table, day))
                names.append(schema.partition_bounds(table, day)[0])
            _known_days.add(day)
    return names


def ensure_days(days: set[date]) -> None:
    """Called on the ingest path for the days a batch touches; a catalog round trip only for unseen days."""
    for day in days - _known_days:
        ensure_partitions(day, 0)


def list_partitions(table: schema.Table) -> list[tuple[str, datetime, datetime]]:
    with connection.cursor() as cur:
        cur.execute(
            "SELECT c.relname FROM pg_inherits i JOIN pg_class c ON c.oid = i.inhrelid "
            "JOIN pg_class p ON p.oid = i.inhparent WHERE p.relname = %s ORDER BY c.relname",
            [table.name],
        )
        rows = [r[0] for r in cur.fetchall()]
    out = []
    for name in rows:
        bounds = schema.parse_partition(table, name)
        if bounds is not None:
            out.append((name, *bounds))
    return out


def retention_days(table: schema.Table) -> int:
    return {
        "raw": settings.RETENTION_RAW_DAYS,
        "1m": settings.RETENTION_1M_DAYS,
        "1h": settings.RETENTION_1H_DAYS,
    }[table.resolution]


def apply_retention(now: datetime | None = None) -> list[str]:
    """Drop partitions whose whole range is older than the table's retention. Returns what was dropped."""
    now = now or datetime.now(UTC)
    dropped: list[str] = []
    for table in schema.ALL_TABLES:
        cutoff = now - timedelta(days=retention_days(table))
        for name, _lo, hi in list_partitions(table):
            if hi <= cutoff:
                with connection.cursor() as cur:
                    cur.execute(f"DROP TABLE IF EXISTS {name}")
                dropped.append(name)
                log.info("retention: dropped %s (older than %s days)", name, retention_days(table))
    _known_days.clear()
    fleet_rollup.apply_retention(now - timedelta(days=settings.RETENTION_1M_DAYS))
    return dropped
