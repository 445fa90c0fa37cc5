"""Completion notices: the job's own callback URL and the `job` webhook event, both through control.webhooks."""

from __future__ import annotations

import logging
from typing import Any

from django.conf import settings

from control.jobs.models import Job
from control.webhooks import events, sender
from core.audit.redact import redact_url

log = logging.getLogger(__name__)
MAX_RESULT_IN_PAYLOAD = 64 * 1024  # the full result is at GET /api/v1/jobs/<id>; a webhook carries at most this


def payload(job: Job) -> dict[str, Any]:
    result = job.result
    return {
        "id": str(job.id), "status": job.status, "model": job.model, "priority": job.priority,
        # job/state/summary/severity: what the Alertmanager and Slack formats turn into labels and text.
        "job": str(job.id), "state": job.status, "severity": "warning" if job.status == "failed" else "info",
        "summary": f"job {job.id} {job.status} ({job.shards_done}/{job.shards_total} shards, {job.model})",
        "owner": job.owner.get_username(),
        "shards": {"done": job.shards_done, "total": job.shards_total},
        "result": result[:MAX_RESULT_IN_PAYLOAD], "result_truncated": len(result) > MAX_RESULT_IN_PAYLOAD,
        "error": job.error,
        "usage": {"prompt_tokens": job.prompt_tokens, "completion_tokens": job.completion_tokens},
        "created": job.created.isoformat(), "finished": job.finished.isoformat() if job.finished else None,
        "url": settings.EXTERNAL_URL.rstrip("/") + f"/api/v1/jobs/{job.id}",
    }


def job_finished(job_id: str) -> None:
    """Queue the callback and the event; called once per job, in the transaction that made it done or failed."""
    job = Job.objects.select_related("owner").get(pk=job_id)
    body = payload(job)
    if job.callback_url:
        try:
            # Signed with the job's own key (X-Switchyard-Signature, as webhooks are): the receiver got it in the
            # 201 of the submission and checks the notice with control/webhooks/verify.py.
            sender.send_callback(job.callback_url, "job", body, secret=job.callback_secret)
        except ValueError:  # a URL the sender refuses (checked at submit too): the job stays done, the log says why
            # The URL's path and query may be the receiver's credential: the log names its host only.
            log.exception("job %s: callback to %s not queued", job_id, redact_url(job.callback_url))
    events.emit("job", body)
