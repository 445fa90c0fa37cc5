"""The guard: after a policy activation, compare the fleet with the period before and roll the change back when
it got worse (docs/guard.md).

The controller calls `open_watches()` then `check()` every tick. A watch covers one activated revision:
`open_watches` starts one for each watched kind whose active revision was activated within the watch window;
`check` compares the window since the activation with the `baseline_s` before it, and ends the watch as passed,
rolled_back or skipped. The bounds come from the active `scaling` policy's `guard` section at each call.

Figures come from the minute rows (control.routing RequestMinute for requests, node_sample_1m for queues), so
windows are whole minutes: the activation's own minute counts as "after" (a verdict can come within the first
minute; the few requests before the change in it only dilute the degradation), the baseline ends where it begins.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

from django.db import connection, transaction
from django.utils import timezone

from control.controller import notify
from control.controller.models import GuardWatch
from control.policy import service
from control.policy.models import GLOBAL, ActivePolicy, PolicyRevision
from control.policy.schemas import validate
from control.routing import histogram
from control.routing.models import RequestMinute
from core.audit.context import Origin
from core.audit.models import AuditEvent
from core.audit.record import record
from dashboard.metrics import schema

log = logging.getLogger(__name__)

ACTOR = "controller"  # the guard's rollbacks and audit events are the controller's
SETTLE_S = 30  # the final verdict waits this long after `until`: the routing aggregation runs every 10 s
QUEUE_MINUTES = 3  # a queue verdict before `until` needs this many sampled minutes (one bad minute is noise)
MINUTE = timedelta(minutes=1)
Figures = dict[str, Any]


@dataclass(frozen=True)
class Verdict:
    watch: int
    kind: str
    state: str  # GuardWatch.State: watching (no verdict yet), passed, rolled_back, skipped
    reason: str


def bounds() -> dict[str, Any]:
    """The guard section of the active scaling policy, defaults filled in."""
    return validate("scaling", service.active("scaling").document)["guard"]


def _floor_minute(ts: datetime) -> datetime:
    return ts.astimezone(UTC).replace(second=0, microsecond=0)


def _iso(ts: datetime) -> str:
    return ts.astimezone(UTC).isoformat(timespec="seconds").replace("+00:00", "Z")


# --- watches ----------------------------------------------------------------------------------------------------
def open_watches(now: datetime | None = None) -> list[GuardWatch]:
    """Start a watch for each watched kind whose active revision was activated within the watch window and has
    none yet. Not watched: a kind's first revision (nothing to go back to) and the guard's own rollbacks (which
    would otherwise be judged against the very period that made the guard act). Idempotent."""
    now = now or timezone.now()
    guard = bounds()
    if not guard["enabled"]:
        return []
    window = timedelta(seconds=guard["watch_window_s"])
    opened: list[GuardWatch] = []
    for kind in guard["kinds"]:
        service.active(kind)  # makes the shipped default on a fresh database
        # The pointer's `updated` is when it last moved, i.e. when its revision was activated (an old revision
        # activated again counts from then; its creation time would not).
        pointer = ActivePolicy.objects.select_related("revision").get(kind=kind, scope=GLOBAL)
        rev, started = pointer.revision, pointer.updated
        # The guard's own rollbacks restore an earlier revision; a canary the controller promoted is new content
        # and is watched like any other change.
        own_rollback = rev.author == ACTOR and rev.restored_from_id is not None
        if rev.parent_id is None or own_rollback or now - started >= window:
            continue
        watch, created = GuardWatch.objects.get_or_create(
            revision=rev, defaults={"kind": kind, "started": started, "until": started + window})
        if created:
            log.info("guard: watching %s v%s (revision %s) until %s", kind, rev.version, rev.pk, watch.until)
            opened.append(watch)
    return opened


def check(now: datetime | None = None) -> list[Verdict]:
    """Judge every open watch: one Verdict each (state "watching" while there is no verdict yet). A watch that
    another check() is judging at the same moment is left to it (and not reported here)."""
    now = now or timezone.now()
    guard = bounds()
    verdicts = []
    for pk in GuardWatch.objects.filter(state=GuardWatch.State.WATCHING).order_by("started", "pk") \
            .values_list("pk", flat=True):
        verdict = _check_one(pk, guard, now)
        if verdict is not None:
            verdicts.append(verdict)
    return verdicts


def before_rollback() -> None:
    """Called with the watch locked, just before rolling back; tests use it to line two check() runs up."""


def _check_one(pk: int, guard: dict[str, Any], now: datetime) -> Verdict | None:
    with transaction.atomic():
        # The row lock plus the state filter is the compare-and-set: a second check() waits here and then finds
        # the watch decided, so one activation is never rolled back (or reported) twice.
        watch = GuardWatch.objects.select_for_update().select_related("revision") \
            .filter(pk=pk, state=GuardWatch.State.WATCHING).first()
        if watch is None:
            return None
        if not guard["enabled"]:
            return _finish(watch, GuardWatch.State.SKIPPED, "the guard was disabled", now)
        if watch.kind not in guard["kinds"]:
            return _finish(watch, GuardWatch.State.SKIPPED, f"{watch.kind} changes are no longer watched", now)
        current = service.active(watch.kind)
        if current.pk != watch.revision_id:
            return _finish(watch, GuardWatch.State.SKIPPED, _superseded(current), now)

        end = min(now, watch.until)
        start = _floor_minute(watch.started)
        watch.baseline = measure(start - timedelta(seconds=guard["baseline_s"]), start)
        watch.observed = measure(start, end)
        over = now >= watch.until
        problems = degradations(watch.baseline, watch.observed, guard, final=over)
        if problems:
            return _roll_back(watch, problems, guard, now)
        if now < watch.until + timedelta(seconds=SETTLE_S):
            watch.save(update_fields=["baseline", "observed"])
            return Verdict(watch.pk, watch.kind, str(GuardWatch.State.WATCHING), f"so far: {summary(watch.observed)}")
        low = [f"not enough traffic: {watch.observed['requests']} requests"] \
            if watch.observed["requests"] < guard["min_requests"] else []
        if not low and watch.baseline["requests"] < guard["min_requests"]:
            low = [f"not enough traffic before the change: {watch.baseline['requests']} requests"]
        if low:
            return _finish(watch, GuardWatch.State.SKIPPED, f"{low[0]} (at least {guard['min_requests']} needed)",
                           now)
        return _finish(watch, GuardWatch.State.PASSED,
                       f"no degradation: {summary(watch.observed)} after, {summary(watch.baseline)} before", now)


def _superseded(current: PolicyRevision) -> str:
    return f"superseded by revision {current.version} (id {current.pk}, by {current.author})"


def _finish(watch: GuardWatch, state: str, reason: str, now: datetime) -> Verdict:
    watch.state, watch.verdict, watch.finished = state, reason, now
    watch.save(update_fields=["state", "verdict", "finished", "baseline", "observed"])
    log.info("guard: %s v%s %s: %s", watch.kind, watch.revision.version, state, reason)
    return Verdict(watch.pk, watch.kind, str(state), reason)


# --- figures ----------------------------------------------------------------------------------------------------
_TOTALS = f"""
SELECT coalesce(sum(requests), 0), coalesce(sum(status_429), 0), coalesce(sum(status_5xx), 0)
FROM {RequestMinute._meta.db_table} WHERE minute >= %s AND minute < %s
"""
# Bucket-wise sum in the database: an hour of a large fleet is tens of thousands of 161-bucket rows.
_LATENCY = f"""
SELECT u.i, sum(u.c) FROM {RequestMinute._meta.db_table} t, unnest(t.latency_buckets) WITH ORDINALITY AS u(c, i)
WHERE t.minute >= %s AND t.minute < %s AND t.node <> '' GROUP BY u.i
"""
_QUEUE = f"""
SELECT bucket, sum(requests_waiting_avg) FROM {schema.NODE_1M.name}
WHERE bucket >= %s AND bucket < %s AND requests_waiting_avg IS NOT NULL GROUP BY bucket
"""


def measure(start: datetime, end: datetime) -> Figures:
    """The fleet's figures over the minutes that begin in [start, end).

    requests: answered requests, i.e. all but 429s (shedding is the priorities policy doing its job, neither an
    error nor an answer); error_pct: 5xx among them, those no node could take included; p95_ms: latency of the
    requests a node served (fast 429s and 503s would make an overloaded fleet look quick); queue: requests
    waiting in the inference servers, summed over nodes per minute, averaged over the minutes with samples."""
    with connection.cursor() as cur:
        cur.execute(_TOTALS, [start, end])
        total, shed, errors = (int(v) for v in cur.fetchone())
        cur.execute(_LATENCY, [start, end])
        counts = histogram.empty()
        for i, c in cur.fetchall():
            if 1 <= i <= histogram.BUCKETS:
                counts[i - 1] = int(c)
        cur.execute(_QUEUE, [start, end])
        queue = [float(v) for _, v in cur.fetchall()]
    answered = total - shed
    p95 = histogram.percentile(counts, 0.95)
    return {
        "from": _iso(start), "to": _iso(end), "requests": answered, "shed_429": shed, "errors_5xx": errors,
        "error_pct": round(100.0 * errors / answered, 3) if answered > 0 else None,
        "p95_ms": None if p95 is None else round(p95, 1), "latency_samples": sum(counts),
        "queue": round(sum(queue) / len(queue), 3) if queue else None, "queue_minutes": len(queue),
    }


def degradations(baseline: Figures, observed: Figures, guard: dict[str, Any], final: bool) -> list[str]:
    """What got worse past the bounds, one sentence each with the numbers; empty when nothing did (yet).

    Latency and errors need min_requests answered requests on both sides (no comparison against a quiet
    baseline); the queue needs none, only QUEUE_MINUTES sampled minutes until the window is over."""
    out = []
    enough = observed["requests"] >= guard["min_requests"] and baseline["requests"] >= guard["min_requests"]
    ratio = guard["p95_latency_ratio"]
    if enough and observed["p95_ms"] is not None and baseline["p95_ms"] is not None \
            and observed["p95_ms"] > baseline["p95_ms"] * ratio:
        out.append(f"p95 latency {observed['p95_ms']:g} ms is above {ratio:g} x the {baseline['p95_ms']:g} ms "
                   f"before ({baseline['p95_ms'] * ratio:.1f} ms)")
    rise = guard["error_rate_increase_pct"]
    if enough and observed["error_pct"] is not None and baseline["error_pct"] is not None \
            and observed["error_pct"] > baseline["error_pct"] + rise:
        out.append(f"error rate {observed['error_pct']:.2f} % ({observed['errors_5xx']} of "
                   f"{observed['requests']} requests) is more than {rise:g} points above the "
                   f"{baseline['error_pct']:.2f} % before")
    minutes = observed["queue_minutes"] >= (1 if final else QUEUE_MINUTES)
    if minutes and observed["queue"] is not None:
        before = baseline["queue"] or 0.0
        limit = max(guard["queue_floor"], before * guard["queue_ratio"])
        if observed["queue"] > limit:
            out.append(f"mean queue {observed['queue']:g} is above {limit:g} (the larger of the floor "
                       f"{guard['queue_floor']:g} and {guard['queue_ratio']:g} x the {before:g} before)")
    return out


def summary(f: Figures) -> str:
    p95 = "-" if f["p95_ms"] is None else f"{f['p95_ms']:g} ms"
    err = "-" if f["error_pct"] is None else f"{f['error_pct']:.2f} %"
    queue = "-" if f["queue"] is None else f"{f['queue']:g}"
    return f"{f['requests']} requests, p95 {p95}, errors {err}, queue {queue}"


# --- rolling back -----------------------------------------------------------------------------------------------
def previous_revision(rev: PolicyRevision) -> PolicyRevision:
    """The revision that was active before `rev` was activated: its activation's audit event says (an existing
    revision activated later was not necessarily made from the one it replaced); its parent otherwise."""
    event = AuditEvent.objects.filter(
        target=service.target(rev.kind, rev.scope), action__in=("policy.create", "policy.activate", "policy.rollback"),
        details__revision=rev.pk).order_by("-time", "-id").first()
    pk = None
    if event is not None:
        pk = event.details.get("previous") or event.details.get("parent")
    found = PolicyRevision.objects.filter(pk=pk, kind=rev.kind, scope=rev.scope).first() if pk else None
    if found is not None:
        return found
    assert rev.parent is not None  # open_watches never watches a first revision
    return rev.parent


def _roll_back(watch: GuardWatch, problems: list[str], guard: dict[str, Any], now: datetime) -> Verdict:
    rev = watch.revision
    kind = watch.kind
    target_rev = previous_revision(rev)
    seconds = (min(now, watch.until) - watch.started).total_seconds()
    since = f"{seconds:.0f} s" if seconds < 120 else f"{seconds / 60:.1f} min"
    reason = (f"The guard rolled back {kind} v{rev.version} (by {rev.author}) to v{target_rev.version}: "
              f"{'; '.join(problems)}; over the {since} since the change "
              f"({watch.observed['requests']} requests) against the {guard['baseline_s'] // 60} min before "
              f"({watch.baseline['requests']} requests).")
    origin = Origin.system(ACTOR)
    before_rollback()
    try:  # rollback() runs in a savepoint: a refusal leaves this transaction usable
        change = service.rollback(kind, target_rev.pk, reason, origin, expected_active=rev.pk)
    except service.PolicyError as exc:  # someone changed the kind since the check above: theirs stands
        current = service.active(kind)
        why = _superseded(current) if current.pk != rev.pk else f"could not roll back: {exc.message}"
        return _finish(watch, GuardWatch.State.SKIPPED, why, now)
    limits = {"p95_ms": None if watch.baseline["p95_ms"] is None
              else round(watch.baseline["p95_ms"] * guard["p95_latency_ratio"], 1),
              "error_pct": None if watch.baseline["error_pct"] is None
              else round(watch.baseline["error_pct"] + guard["error_rate_increase_pct"], 3),
              "queue": max(guard["queue_floor"], (watch.baseline["queue"] or 0.0) * guard["queue_ratio"])}
    record(origin, "guard.rollback", service.target(kind), reason, before=watch.baseline, after=watch.observed,
           details={"watch": watch.pk, "revision": rev.pk, "version": rev.version, "restored": target_rev.pk,
                    "restored_version": target_rev.version, "rollback_revision": change.revision.pk,
                    "rollback_version": change.revision.version, "limits": limits, "problems": problems,
                    "bounds": guard})
    notify.send([_alert(watch, target_rev, problems, reason, now)])
    watch.rollback_revision = change.revision
    watch.state, watch.verdict, watch.finished = GuardWatch.State.ROLLED_BACK, reason, now
    watch.save(update_fields=["state", "verdict", "finished", "baseline", "observed", "rollback_revision"])
    log.warning("guard: %s", reason)
    return Verdict(watch.pk, kind, str(GuardWatch.State.ROLLED_BACK), reason)


def _alert(watch: GuardWatch, restored: PolicyRevision, problems: list[str], reason: str,
           now: datetime) -> dict[str, Any]:
    """Firing: the change was undone, but the fleet degraded and a person should look at why. One incident per
    watch: a second bad change later is a new alert, not a repeat of this one."""
    return notify.alert(
        "guard_rollback", {"kind": watch.kind, "version": str(watch.revision.version)},
        f"the guard rolled the {watch.kind} policy back from v{watch.revision.version} to v{restored.version}: "
        f"{'; '.join(problems)}", reason, started=now, path=f"/policies/{watch.kind}/history/",
        key=f"guard:{watch.pk}")
