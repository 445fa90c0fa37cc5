"""Job lifecycle: submit (rows + audit + enqueue), shard completion with an exactly-once merge, failure, cancel.

State changes are compare-and-set UPDATEs on the job row (`WHERE status = ...`), so concurrent shard tasks, a
redelivered task and a cancel can race without double merges or double notices: only the UPDATE that matched
makes the transition, and only its transaction queues the notice (sent after it commits).
"""

from __future__ import annotations

import secrets
from datetime import datetime
from typing import Any

from django.db import transaction
from django.db.models import F
from django.utils import timezone

from control.jobs.models import Job, Shard
from control.jobs.validation import JobSpec
from core.audit.context import Origin
from core.audit.record import record

MERGE_SEPARATOR = "\n\n"  # chunks were cut at paragraph boundaries; their outputs are joined the same way
MAX_TRIES_KEPT = 50  # a shard may wait an hour on Retry-After: keep the latest tries (`attempts` counts them all)
LIVE = (Job.Status.QUEUED, Job.Status.RUNNING)
OPEN_SHARD = (Shard.Status.PENDING, Shard.Status.RUNNING, Shard.Status.WAITING)


def _enqueue(shard_ids: list[int]) -> None:
    from control.jobs.tasks import run_shard

    for sid in shard_ids:
        run_shard.delay(sid)


def new_callback_secret() -> str:
    """A per-job signing key (256 random bits), the same form as a webhook receiver's generated secret."""
    return secrets.token_urlsafe(32)


def submit(owner: Any, spec: JobSpec, origin: Origin) -> Job:
    """Store the job and its shards, audit it, and enqueue the shards once committed. A job with a callback URL gets
    its own `callback_secret` (on the returned row: the API shows it in the 201 and never again)."""
    with transaction.atomic():
        job = Job.objects.create(
            owner=owner, model=spec.model, input=spec.input, messages=spec.messages, max_tokens=spec.max_tokens,
            temperature=spec.temperature, priority=spec.priority, callback_url=spec.callback_url,
            callback_secret=new_callback_secret() if spec.callback_url else "",
            token_budget=spec.token_budget, shards_total=len(spec.chunks))
        shards = Shard.objects.bulk_create(
            [Shard(job=job, index=i, input=chunk) for i, chunk in enumerate(spec.chunks)])
        record(origin, "job.submit", f"job:{job.id}",
               spec.reason or f"submitted {job.model} at class {job.priority}",
               after={"model": job.model, "priority": job.priority, "shards": job.shards_total,
                      "input_chars": len(spec.input) or sum(len(m["content"]) for m in spec.messages or []),
                      "callback_url": job.callback_url, "token_budget": job.token_budget})
        ids = [s.pk for s in shards]
        transaction.on_commit(lambda: _enqueue(ids))
    return job


def mark_running(shard: Shard) -> None:
    now = timezone.now()
    with transaction.atomic():
        Shard.objects.filter(pk=shard.pk).update(status=Shard.Status.RUNNING, attempts=F("attempts") + 1,
                                                 started=shard.started or now, error="")
        Job.objects.filter(pk=shard.job_id, status=Job.Status.QUEUED).update(status=Job.Status.RUNNING, started=now)


def record_try(shard: Shard, sent: datetime, status: int, node: str, retry_after: int | None) -> None:
    """Note one gateway call of the shard: when it was sent, the answer's status (0: none came), the node that
    answered and the Retry-After it was given, so the detail shows when each try went out and why it waited."""
    entry = {"at": sent.isoformat(), "status": status, "node": node, "retry_after": retry_after}
    with transaction.atomic():
        tries = Shard.objects.select_for_update().values_list("tries", flat=True).get(pk=shard.pk)
        Shard.objects.filter(pk=shard.pk).update(tries=[*(tries or []), entry][-MAX_TRIES_KEPT:])


def wait(shard: Shard, seconds: int, why: str) -> None:
    Shard.objects.filter(pk=shard.pk, status__in=OPEN_SHARD).update(
        status=Shard.Status.WAITING, waited_s=F("waited_s") + seconds, error=why)


def complete(shard: Shard, node: str, output: str, prompt_tokens: int, completion_tokens: int) -> bool:
    """Record a shard's answer; the task whose update completes the last shard merges. True when it merged."""
    now = timezone.now()
    with transaction.atomic():
        changed = Shard.objects.filter(pk=shard.pk, status__in=OPEN_SHARD).update(
            status=Shard.Status.DONE, node=node, output=output, prompt_tokens=prompt_tokens,
            completion_tokens=completion_tokens, finished=now, error="")
        if not changed:  # a redelivered task, or the job was cancelled/failed meanwhile
            return False
        Job.objects.filter(pk=shard.job_id).update(
            shards_done=F("shards_done") + 1, prompt_tokens=F("prompt_tokens") + prompt_tokens,
            completion_tokens=F("completion_tokens") + completion_tokens)
        # Compare-and-set: the job row is locked by the update above until commit, so of two shards finishing
        # together the second one's update sees the first one's count, and only one sees done == total.
        won = Job.objects.filter(pk=shard.job_id, status=Job.Status.RUNNING,
                                 shards_done=F("shards_total")).update(status=Job.Status.MERGING)
        if not won:
            return False
        outputs = Shard.objects.filter(job_id=shard.job_id).order_by("index").values_list("output", flat=True)
        Job.objects.filter(pk=shard.job_id).update(status=Job.Status.DONE, result=MERGE_SEPARATOR.join(outputs),
                                                   finished=now)
        _notify(shard.job_id)
    return True


def fail(shard: Shard, error: str) -> bool:
    """Fail the shard and with it the job (once); the job's other open shards are cancelled. True if the job failed."""
    now = timezone.now()
    with transaction.atomic():
        Shard.objects.filter(pk=shard.pk, status__in=OPEN_SHARD).update(status=Shard.Status.FAILED, error=error,
                                                                        finished=now)
        won = Job.objects.filter(pk=shard.job_id, status__in=LIVE).update(
            status=Job.Status.FAILED, error=f"shard {shard.index}: {error}", finished=now)
        if won:
            Shard.objects.filter(job_id=shard.job_id, status__in=(Shard.Status.PENDING, Shard.Status.WAITING)).update(
                status=Shard.Status.CANCELLED, finished=now)
            _notify(shard.job_id)
    return bool(won)


def drop(shard: Shard, why: str) -> None:
    """A shard whose job ended (failed or cancelled) while it ran: it shows as cancelled, not running forever."""
    Shard.objects.filter(pk=shard.pk, status__in=OPEN_SHARD).update(status=Shard.Status.CANCELLED, error=why,
                                                                    finished=timezone.now())


def cancel(job: Job, origin: Origin, reason: str) -> bool:
    """Cancel a queued or running job: waiting/pending shards never call the gateway again (their scheduled
    retries find the job cancelled); a call in flight finishes and its answer is dropped. False if already over."""
    now = timezone.now()
    with transaction.atomic():
        won = Job.objects.filter(pk=job.pk, status__in=LIVE).update(
            status=Job.Status.CANCELLED, finished=now, error=f"cancelled by {origin.actor}: {reason}")
        if not won:
            return False
        Shard.objects.filter(job=job, status__in=OPEN_SHARD).update(status=Shard.Status.CANCELLED, finished=now)
        record(origin, "job.cancel", f"job:{job.id}", reason, before={"status": job.status},
               after={"status": Job.Status.CANCELLED})
    return True


def _notify(job_id: Any) -> None:
    """Queue the callback and the `job` event inside the transaction that ended the job: the delivery rows commit
    with the new status or not at all (the webhook sender sends them after the commit)."""
    from control.jobs.notify import job_finished

    job_finished(str(job_id))
