"""One evaluation of every alert rule: read the series, step each (rule, label set) through the state machine,
store the result (a few bulk statements at the end, see Writes), queue the notifications. Runs in one transaction
under a PostgreSQL advisory lock (leader lock: a second evaluator at the same moment skips), so a crash mid-run
leaves nothing half-done, and alert rows are unique per live fingerprint, so a restart continues the same alerts
instead of opening new ones.
"""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from django.db import connection, transaction
from django.utils import timezone

from control.alerts import machine, notify, series, silences, templating
from control.alerts.fingerprint import fingerprint
from control.alerts.machine import Track
from control.alerts.models import Alert
from control.policy import service as policy

log = logging.getLogger(__name__)

LOCK_KEY = 0x5357_414C_4552_5453 & 0x7FFF_FFFF_FFFF_FFFF  # "SWALERTS": one key for the alert evaluator


WRITE_BATCH = 1000  # rows per bulk statement
# What an evaluation writes to every alert row it keeps (one list for all rows: they are written in one statement).
_FIELDS = ("state", "active_at", "fired_at", "last_true_at", "resolved_at", "evaluated_at", "silenced", "labels",
           "severity", "threshold", "value", "annotations")


@dataclass
class Writes:
    """The row changes of one evaluation, written together at its end (a few statements, whatever the number of
    alerts) instead of one query per alert while every live alert is locked."""

    create: list[Alert] = field(default_factory=list)
    update: list[Alert] = field(default_factory=list)
    delete: list[int] = field(default_factory=list)

    def merge(self, other: Writes) -> None:
        self.create += other.create
        self.update += other.update
        self.delete += other.delete

    def flush(self) -> None:
        if self.delete:
            Alert.objects.filter(pk__in=self.delete).delete()
        for i in range(0, len(self.update), WRITE_BATCH):
            _update_rows(self.update[i:i + WRITE_BATCH])
        if self.create:
            Alert.objects.bulk_create(self.create, batch_size=WRITE_BATCH)


def _update_rows(rows: list[Alert]) -> None:
    """One UPDATE .. FROM unnest(<one array per column>) for all `rows`. Django's bulk_update writes a CASE per
    field over every row, which PostgreSQL evaluates row by row: on 400 alerts it was slower than the single-row
    saves it would replace (bench/alerts.py)."""
    fields = [Alert._meta.get_field(name) for name in _FIELDS]
    columns = ["id", *(f.column for f in fields)]
    arrays = ", ".join(f"%s::{t}[]" for t in ["bigint", *(f.db_type(connection) for f in fields)])
    params: list[list[Any]] = [[r.pk for r in rows]]
    for f in fields:
        values = [getattr(r, f.attname) for r in rows]
        if f.get_internal_type() == "JSONField":
            values = [None if v is None else json.dumps(v) for v in values]
        params.append(values)
    sets = ", ".join(f"{c} = v.{c}" for c in columns[1:])
    with connection.cursor() as cur:
        cur.execute(f"UPDATE {Alert._meta.db_table} AS a SET {sets} FROM unnest({arrays}) AS v({', '.join(columns)}) "
                    "WHERE a.id = v.id", params)


@dataclass
class Result:
    rules: int = 0
    series: int = 0
    pending: int = 0
    firing: int = 0
    resolved: int = 0
    notified: int = 0
    skipped_rules: list[str] = field(default_factory=list)


def _track(a: Alert | None) -> Track:
    if a is None:
        return Track()
    return Track(a.state, a.active_at, a.fired_at, a.last_true_at, a.resolved_at)


def _labels(rule: dict[str, Any], labels: series.Labels) -> dict[str, str]:
    return {"alertname": rule["name"], "severity": rule["severity"], **dict(labels)}


def _annotations(rule: dict[str, Any], labels: dict[str, str], value: float | None) -> dict[str, str]:
    context = {"value": value, "threshold": rule["threshold"], "rule": rule["name"], "metric": rule["metric"],
               "severity": rule["severity"], "scope": rule["scope"]}
    out = {k: templating.render(rule.get(k) or "", labels, context) for k in ("summary", "description")}
    if not out["summary"]:
        where = " ".join(f"{k}={labels[k]}" for k in ("pool", "node", "gpu") if k in labels)
        out["summary"] = f"{rule['name']}: {rule['metric']} {rule['comparison']} {rule['threshold']:g}" + (
            f" ({where})" if where else "")
    return {k: v for k, v in out.items() if v}


def evaluate(now: datetime | None = None) -> Result | None:
    """Evaluate every rule once at `now` (the clock is injectable for tests). None: another evaluator holds the
    lock (nothing done)."""
    now = now or timezone.now()
    with transaction.atomic():
        with connection.cursor() as cur:
            cur.execute("SELECT pg_try_advisory_xact_lock(%s)", [LOCK_KEY])
            if not cur.fetchone()[0]:
                return None
        revision = policy.active("alerts")
        rules = [r for r in revision.document.get("rules", []) if r.get("enabled", True)]
        fleet = series.collect(now)
        live = {a.fingerprint: a for a in Alert.objects.select_for_update().filter(
            state__in=[Alert.State.PENDING, Alert.State.FIRING])}
        muted = silences.active(now)
        result = Result(rules=len(rules))
        seen: set[str] = set()
        writes = Writes()
        for rule in rules:
            if fleet.snapshots is None and series.needs_samples(rule["metric"]):
                # Unknown is not "all clear": leave this rule's alerts exactly as they are.
                result.skipped_rules.append(rule["name"])
                seen.update(fp for fp, a in live.items() if a.rule == rule["name"])
                continue
            # One broken rule cannot stop the others: its writes are dropped, its alerts left as they are.
            rule_writes = Writes()
            try:
                _evaluate_rule(rule, fleet, live, now, muted, revision.pk, result, seen, rule_writes)
            except Exception:
                log.exception("alerts: rule %s could not be evaluated; its alerts are left as they are",
                              rule.get("name"))
                result.skipped_rules.append(rule.get("name", "?"))
                seen.update(fp for fp, a in live.items() if a.rule == rule.get("name"))
                continue
            writes.merge(rule_writes)
        # Alerts of rules deleted or disabled since: end them (a firing one resolves and says so).
        for fp, a in live.items():
            if fp not in seen:
                rule = {"name": a.rule, "severity": a.severity, "threshold": a.threshold, "for_s": 0,
                        "keep_firing_for_s": 0}
                key = tuple(sorted((k, v) for k, v in a.labels.items() if k in ("pool", "node", "gpu")))
                _apply(rule, fp, key, None, False, a, now, muted, revision.pk, result, writes, keep_text=True)
        writes.flush()  # before the notifications, which read the rows back
        repeat = {r["name"]: int(r.get("repeat_interval_s") or 0) for r in rules}
        result.notified = len(notify.send(now, repeat))
    return result


def _evaluate_rule(rule: dict[str, Any], fleet: series.Fleet, live: dict[str, Alert], now: datetime,
                   muted: list[Any], revision: int, result: Result, seen: set[str], writes: Writes) -> None:
    current = series.values(fleet, rule)
    result.series += len(current)
    keys = {fingerprint(rule["name"], dict(k)): k for k in current}
    for fp, a in live.items():  # live alerts whose series vanished: the condition is false
        if a.rule == rule["name"] and fp not in keys:
            keys[fp] = tuple(sorted((k, v) for k, v in a.labels.items() if k in ("pool", "node", "gpu")))
    for fp, key in keys.items():
        seen.add(fp)
        value = current.get(key)
        condition = value is not None and machine.compare(value, rule["comparison"], rule["threshold"])
        _apply(rule, fp, key, value, condition, live.get(fp), now, muted, revision, result, writes)


def _apply(rule: dict[str, Any], fp: str, key: series.Labels, value: float | None, condition: bool,
           row: Alert | None, now: datetime, muted: list[Any], revision: int, result: Result, writes: Writes,
           keep_text: bool = False) -> None:
    before = _track(row)
    after = machine.step(before, condition, now, rule.get("for_s", 0), rule.get("keep_firing_for_s", 0))
    if after.state == machine.INACTIVE:
        if row is not None:  # pending that cleared before firing: not an incident, no history kept
            writes.delete.append(row.pk)
        return
    if after.state == machine.RESOLVED and row is None:
        return
    labels = _labels(rule, key)
    silenced = silences.matching(muted, labels) is not None
    fields: dict[str, Any] = {
        "state": after.state, "active_at": after.active_at, "fired_at": after.fired_at,
        "last_true_at": after.last_true_at, "resolved_at": after.resolved_at, "evaluated_at": now,
        "silenced": silenced, "labels": labels, "severity": rule["severity"], "threshold": rule["threshold"],
    }
    if value is not None and condition:
        fields["value"] = value
    if not keep_text:
        fields["annotations"] = _annotations(rule, labels, value if condition else (row.value if row else None))
    if row is None or before.state == machine.RESOLVED:
        writes.create.append(Alert(fingerprint=fp, rule=rule["name"], revision=revision, **fields))
    else:
        for k, v in fields.items():
            setattr(row, k, v)
        writes.update.append(row)
    setattr(result, after.state, getattr(result, after.state) + 1)
