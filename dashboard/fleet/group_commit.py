"""Group commit for ingest: pushes that arrive within a few milliseconds share one commit.

The event loop hands each push's body to this process's one committer thread (ingest_asgi; a caller on its own
thread may instead hand over checked rows and wait: submit). The committer takes the first push queued and whatever
arrives within the group wait after it (about what GROUP_TARGET pushes take to arrive, at most
SWITCHYARD_INGEST_GROUP_WAIT_MS, 100; none on a quiet fleet), up to MAX_GROUP, checking each body (a bad one is
answered alone, without waiting for the commit); makes the group's one Redis round trip (rate limits, power caps, the token
revocation counter: ingest.admit); stores the group: one COPY per table, one commit; then one Redis pipeline for
their latest snapshots. Only then is each push answered, so the 200 still goes out only after the push's rows have
committed. A commit and its round trips cost about what checking a few pushes costs, so the wait makes each push
cheaper under load, for at most the wait added to a push's latency. The thread sleeps through the wait and then
checks what came, rather than waking for each push as it arrives (see _gather).

A failure is reported to exactly the pushes it hit. A replayed sample (unique violation) makes the group take the
slow path together (staging tables, INSERT .. ON CONFLICT DO NOTHING), each push still told how many of its own
samples were new. Any other error of the rows (a constraint: a node deleted meanwhile) rolls the group back and
commits each push alone, so only the pushes whose rows fail get the error; the others succeed. A lost connection
(OperationalError, InterfaceError: a database restart) gets the group one more try on a new connection; if the
database is gone, every push of the group gets the error then (503: the agents keep their samples and retry),
after one connection attempt rather than one each.
"""

from __future__ import annotations

import logging
import queue
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import date, datetime
from typing import TYPE_CHECKING, Any

import orjson
from django.conf import settings
from django.db import DatabaseError, IntegrityError, InterfaceError, OperationalError, connection, transaction

from dashboard.metrics import partitions
from dashboard.metrics.latest import store_latest_many
from dashboard.metrics.storage import copy_deduplicated_keys, copy_direct, ensure_staging

if TYPE_CHECKING:
    from dashboard.fleet.ingest import Incoming, NodeInfo, Pusher, Reply
    from dashboard.fleet.validation import Batch

log = logging.getLogger(__name__)
MAX_GROUP = 256  # pushes per commit: bounds one transaction's size (about 2,300 rows at 8 GPUs a node)
# The group the wait aims for: the committer waits about as long as this many pushes take to arrive at the rate it
# measures, never longer than SWITCHYARD_INGEST_GROUP_WAIT_MS. A commit costs about what a dozen pushes' checks
# cost (the Redis round trip, BEGIN, the node refresh, two COPYs, COMMIT, the snapshots' pipeline, and
# PostgreSQL's side of each), so groups of 2-3 (a 20-ms wait at 100 pushes/s a worker) spent most of their CPU on
# commits; past this size a larger group saves little and only adds latency.
GROUP_TARGET = 16
RATE_WINDOW_S = 1.0  # how often the arrival rate is re-measured


@dataclass
class Pending:
    """One validated push, its rows ready for COPY, waiting for its commit."""

    node: NodeInfo
    batch: Batch
    now: datetime
    node_rows: list[list[Any]]
    gpu_rows: list[list[Any]]
    days: set[date]
    snapshot: dict[str, Any]  # the node's latest state, written to Redis after the commit (node fields refreshed)
    minutes: set[int]  # the minutes of its samples, epoch seconds
    done: threading.Event = field(default_factory=threading.Event)
    accepted: int = 0
    error: BaseException | None = None
    on_done: Callable[[Pending], None] | None = None  # a push from the event loop: answer it (ingest.Incoming)
    finished: bool = False
    pusher: Pusher | None = None  # how it authenticated; its Redis round trip may be left to the group (admit)
    refused: Reply | None = None  # refused by the group's round trip (429, or 401 for a token revoked since)

    def prepare(self) -> Pending | None:
        return self  # checked by its own thread already

    def finish(self) -> None:
        """Wake whoever waits for this push: its thread (submit), or the event loop (on_done)."""
        if self.finished:
            return
        self.finished = True
        if self.on_done is not None:
            self.on_done(self)
        else:
            self.done.set()

    def keys(self) -> Iterator[tuple[int, int, datetime]]:
        return ((r[1], r[2], r[0]) for r in self.node_rows)  # (node_id, seq, ts) of each new sample row


class Committer:
    """This process's committer thread (started on first use) and the queue in front of it."""

    def __init__(self) -> None:
        self._queue: queue.SimpleQueue[Pending | Incoming] = queue.SimpleQueue()
        self._thread: threading.Thread | None = None
        self._start = threading.Lock()
        self._gate = threading.Lock()  # held by hold(): tests queue pushes and release them as one group
        self.groups = 0  # commits made, for tests and the log
        self.waiting = 0  # pushes submitted and not yet answered (tests poll it; read without the lock)
        self.backend_pid: int | None = None
        self._count = threading.Lock()
        self.rate = 0.0  # pushes per second taken off the queue, over the last RATE_WINDOW_S or so
        self._taken = 0
        self._since = time.monotonic()

    def submit(self, p: Pending) -> int:
        """Queue the push and wait for its commit. Returns the samples it stored; raises the error it hit."""
        self._ensure_thread()
        with self._count:
            self.waiting += 1
        try:
            self._queue.put(p)
            p.done.wait()
        finally:
            with self._count:
                self.waiting -= 1
        if p.error is not None:
            raise p.error
        return p.accepted

    def submit_nowait(self, job: Incoming) -> None:
        """Queue a push from the event loop; its `resolve` is called (on the committer thread) once it is answered.
        The loop hands the raw body over: decoding and checking it happens here, one hop rather than two."""
        self._ensure_thread()
        with self._count:
            self.waiting += 1
        resolve = job.resolve

        def answered(result: Reply | BaseException) -> None:
            with self._count:
                self.waiting -= 1
            resolve(result)

        job.resolve = answered
        self._queue.put(job)

    @contextmanager
    def hold(self) -> Iterator[None]:
        """Keep the committer from starting a commit until the block ends (tests: form a group on purpose)."""
        with self._gate:
            yield

    def _ensure_thread(self) -> None:
        if self._thread is not None and self._thread.is_alive():
            return
        with self._start:
            if self._thread is None or not self._thread.is_alive():
                self._thread = threading.Thread(target=self._run, name="ingest-committer", daemon=True)
                self._thread.start()

    def _run(self) -> None:
        while True:
            first = self._queue.get()
            with self._gate:
                self._commit_group(self._gather(first))

    def group_wait(self) -> float:
        """Seconds to wait for more pushes after the first of a group: about what GROUP_TARGET pushes take to
        arrive at the measured rate, at most SWITCHYARD_INGEST_GROUP_WAIT_MS, and none when not even one more push
        is expected within that (a quiet fleet, or tests: waiting would only add latency)."""
        most = settings.INGEST_GROUP_WAIT_MS / 1000
        if most <= 0 or self.rate * most < 1.0:
            return 0.0
        return min(most, GROUP_TARGET / self.rate)

    def _measure(self, taken: int) -> None:
        self._taken += taken
        now = time.monotonic()
        if now - self._since >= RATE_WINDOW_S:
            self.rate = self._taken / (now - self._since)
            self._taken = 0
            self._since = now

    def _gather(self, first: Pending | Incoming) -> list[Pending]:
        """The next group: `first` and what arrives within the group wait after it (group_wait), or what is queued
        already when there is no wait or the group is full. The thread sleeps through the wait rather than waking
        for each push: a wake-up per push (and the hand-over of the GIL that comes with it) cost the worker more CPU
        than checking the group's few pushes after the wait adds to their latency (a fraction of a millisecond
        each)."""
        wait = self.group_wait()
        group: list[Pending] = []
        job: Pending | Incoming | None = first
        slept = wait <= 0
        taken = 0
        while job is not None:
            taken += 1
            p = job.prepare()
            if p is not None:
                group.append(p)
            if len(group) >= MAX_GROUP:
                break
            try:
                job = self._queue.get_nowait()
            except queue.Empty:
                if slept:
                    break
                slept = True
                time.sleep(wait)
                try:
                    job = self._queue.get_nowait()
                except queue.Empty:
                    break
        self._measure(taken)
        return group

    def _commit_group(self, group: list[Pending]) -> None:
        from dashboard.fleet.ingest import admit

        try:
            group = admit(group)
            if group:
                self._commit(group)
        except BaseException as exc:  # noqa: BLE001 - never leave a push waiting forever
            for p in group:
                if not p.finished:
                    p.error = exc
                    p.finish()

    def _commit(self, group: list[Pending], retried: bool = False) -> None:
        try:
            self._store(group)
        except DatabaseError as exc:
            connection.close()  # leave no half-done transaction; the next attempt reconnects
            if isinstance(exc, OperationalError | InterfaceError):
                # The connection, not the rows: a database restart drops it. Try the group once on a new one; if
                # the database is gone, every push gets the error after one connection attempt, not one each.
                if not retried:
                    self._commit(group, retried=True)
                    return
                for p in group:
                    p.error = exc
                    p.finish()
                return
            if len(group) == 1:
                group[0].error = exc
                group[0].finish()
                return
            log.info("ingest: a group of %d pushes failed (%s); committing each alone", len(group), exc)
            for p in group:
                self._commit([p])
            return
        self.groups += 1
        self.backend_pid = connection.connection.info.backend_pid  # which PostgreSQL backend commits (tests, ops)
        try:
            # After the commit (the rollups must see the rows before they see the flag), read the clock now: a
            # minute that ended during the commit is flagged too.
            current = int(time.time()) // 60 * 60
            store_latest_many({p.node.name: orjson.dumps(with_node(p.snapshot, p.node, p.batch)) for p in group},
                              {m for p in group for m in p.minutes if m < current})
        except Exception as exc:  # noqa: BLE001 - Redis down: each push of the group answers as it would alone
            for p in group:
                p.error = exc
        for p in group:
            p.finish()

    def _store(self, group: list[Pending]) -> None:
        from dashboard.fleet.ingest import refresh_nodes, update_nodes

        partitions.ensure_days(set().union(*(p.days for p in group)))
        node_rows = [r for p in group for r in p.node_rows]
        gpu_rows = [r for p in group for r in p.gpu_rows]
        try:
            with transaction.atomic():
                refresh_nodes([p.node for p in group])  # the nodes as they are now, for the replies and snapshots
                copy_direct(node_rows, gpu_rows)
                update_nodes([(p.node, p.batch, p.now) for p in group])
            for p in group:
                p.accepted = len(p.node_rows)
        except IntegrityError:
            # A replayed sample: redo the group so that only new samples are stored, each push credited with its own.
            ensure_staging()
            with transaction.atomic():
                new = set(copy_deduplicated_keys(node_rows, gpu_rows))
                update_nodes([(p.node, p.batch, p.now) for p in group])
            for p in group:
                mine = [k for k in p.keys() if k in new]
                new.difference_update(mine)  # the same sample in two pushes of a group is new for the first only
                p.accepted = len(mine)


def with_node(snapshot: dict[str, Any], node: NodeInfo, batch: Batch) -> dict[str, Any]:
    """The snapshot with the node's fields as the commit's group read them."""
    snapshot["pool"] = node.pool
    snapshot["state"] = node.state
    if batch.endpoint is None:
        snapshot["endpoint"] = node.endpoint
    if batch.models is None:
        snapshot["models"] = node.models
    return snapshot


committer = Committer()
