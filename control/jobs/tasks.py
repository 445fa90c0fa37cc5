"""Celery tasks of jobs: one task per shard, calling the gateway; capacity waits are Celery retries, never loops."""

from __future__ import annotations

import logging

from celery import shared_task
from django.conf import settings
from django.utils import timezone

from control.jobs import gateway, service
from control.jobs.models import Job, Shard

log = logging.getLogger(__name__)

MAX_TRANSIENT_ATTEMPTS = 5  # unreachable gateway / 502 / 504: backoff 2, 4, 8, 16 s, then the shard fails


def max_wait_s() -> float:
    """Total seconds one shard may spend waiting on Retry-After before the job fails (default one hour)."""
    return float(settings.JOBS_MAX_WAIT_S)


@shared_task(bind=True, max_retries=None, acks_late=True, ignore_result=True)
def run_shard(self, shard_id: int) -> str:  # type: ignore[no-untyped-def]
    try:
        shard = Shard.objects.select_related("job").get(pk=shard_id)
    except Shard.DoesNotExist:
        return "gone"
    job = shard.job
    if job.terminal or shard.status not in service.OPEN_SHARD:
        return f"skipped ({job.status}/{shard.status})"
    service.mark_running(shard)
    messages = job.messages if job.messages is not None else [{"role": "user", "content": shard.input}]
    body = gateway.request_body(job.model, messages, job.max_tokens, job.temperature)
    sent = timezone.now()
    outcome = gateway.complete(body, job.priority, str(job.id), shard.index, job.owner_id)
    service.record_try(shard, sent, outcome.status, outcome.node,
                       outcome.retry_after if outcome.kind == "busy" else None)

    if Job.objects.filter(pk=job.pk, status__in=Job.TERMINAL).exists():
        service.drop(shard, "the job ended while this shard ran; its answer was dropped")
        return "job over meanwhile; answer dropped"
    if outcome.kind == "ok":
        service.complete(shard, outcome.node, outcome.output, outcome.prompt_tokens, outcome.completion_tokens)
        return f"done on {outcome.node}"
    if outcome.kind == "busy":
        limit = max_wait_s()
        if shard.waited_s + outcome.retry_after > limit:
            service.fail(shard, f"{outcome.error}; gave up after waiting {shard.waited_s:.0f} s in total for "
                                f"capacity (the limit is {limit:.0f} s)")
            return "failed: no capacity"
        service.wait(shard, outcome.retry_after, f"{outcome.error}; retrying in {outcome.retry_after} s")
        raise self.retry(countdown=outcome.retry_after)
    if outcome.kind == "transient" and shard.attempts + 1 < MAX_TRANSIENT_ATTEMPTS:
        delay = 2 ** (shard.attempts + 1)
        service.wait(shard, 0, f"{outcome.error}; retrying in {delay} s")
        raise self.retry(countdown=delay)
    service.fail(shard, outcome.error)
    return "failed"
