"""Completion notices: the job's own callback URL and the `job` webhook event, both through control.webhooks."""

from __future__ import annotations

import logging
from typing import Any

from django.conf import settings

from control.jobs.models import Job

log = logging.getLogger(__name__)
MAX_RESULT_IN_PAYLOAD = 64 * 1024  # the full result is at GET /api/v1/jobs/<id>; a webhook carries at most this


def payload(job: Job) -> dict[str, Any]:
    result = job.result
    return {
        "id": str(job.id), "status": job.status, "model": job.model, "priority": job.priority,
        "owner": job.owner.get_username(),
        "shards": {"done": job.shards_done, "total": job.shards_total},
        "result": result[:MAX_RESULT_IN_PAYLOAD], "result_truncated": len(result) > MAX_RESULT_IN_PAYLOAD,
        "error": job.error,
        "usage": {"prompt_tokens": job.prompt_tokens, "completion_tokens": job.completion_tokens},
        "created": job.created.isoformat(), "finished": job.finished.isoformat() if job.finished else None,
        "url": settings.EXTERNAL_URL.rstrip("/") + f"/api/v1/jobs/{job.id}",
    }


def job_finished(job_id: str) -> None:
    """Queue the callback and the event (after the commit that made the job done/failed, exactly once per job)."""
    job = Job.objects.select_related("owner").get(pk=job_id)
    body = payload(job)
    try:
        from control.webhooks import events, sender
    except ImportError:
        log.error("job %s finished but control.webhooks is not installed: no callback or event sent", job_id)
        return
    if job.callback_url:
        try:
            sender.send_callback(job.callback_url, "job", body)
        except Exception:  # a refused URL (SSRF rules) must not undo the job; the delivery log says why
            log.exception("job %s: callback to %s not queued", job_id, job.callback_url)
    try:
        events.emit("job", body)
    except Exception:
        log.exception("job %s: job event not queued", job_id)
