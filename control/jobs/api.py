"""REST API of jobs: POST/GET /api/v1/jobs, GET /api/v1/jobs/<id>, POST /api/v1/jobs/<id>/cancel.

Roles: operators (and admins) submit and cancel, and read every job; a viewer reads only jobs they own (a viewer
cannot submit, so that is jobs submitted while they held a higher role). Someone else's job answers 404.
"""

from __future__ import annotations

import uuid
from typing import Any

from django.conf import settings
from django.db.models import QuerySet
from drf_spectacular.types import OpenApiTypes
from drf_spectacular.utils import OpenApiParameter, extend_schema
from rest_framework.request import Request
from rest_framework.response import Response
from rest_framework.views import APIView

from control.jobs import service, validation
from control.jobs.models import Job
from core.api import ApiError, BoundedJSONParser, body, errors, text
from core.audit.context import Origin
from core.roles import IsOperator, IsViewer, has_role

MAX_JOB_BODY_BYTES = 4 * 1024 * 1024  # a 1M-character input plus JSON escaping; settings' upload cap is the same


class JobJSONParser(BoundedJSONParser):
    """Job inputs are documents, not policy snippets: a larger cap (Django's upload cap is the same)."""

    max_bytes = min(MAX_JOB_BODY_BYTES, getattr(settings, "DATA_UPLOAD_MAX_MEMORY_SIZE", None) or MAX_JOB_BODY_BYTES)


def visible_jobs(user: Any) -> QuerySet[Job]:
    qs = Job.objects.select_related("owner")
    return qs if has_role(user, "operator") else qs.filter(owner=user)


def get_visible(user: Any, job_id: str) -> Job:
    try:
        uuid.UUID(str(job_id))
    except ValueError:
        raise ApiError(404, f"no job {str(job_id)[:60]!r}: job ids are UUIDs") from None
    job = visible_jobs(user).filter(pk=job_id).first()
    if job is None:
        raise ApiError(404, f"no job {job_id} that you may see (viewers see only their own jobs)")
    return job


def _iso(ts: Any) -> str | None:
    return ts.isoformat() if ts else None


def job_json(job: Job, detail: bool = False) -> dict[str, Any]:
    total = max(job.shards_total, 1)
    out: dict[str, Any] = {
        "id": str(job.id), "status": job.status, "model": job.model, "priority": job.priority,
        "owner": job.owner.get_username(),
        "progress": {"done": job.shards_done, "total": job.shards_total,
                     "percent": round(100 * job.shards_done / total, 1)},
        "error": job.error, "callback_url": job.callback_url,
        "max_tokens": job.max_tokens, "temperature": job.temperature,
        "shard": {"token_budget": job.token_budget} if job.token_budget else None,
        "usage": {"prompt_tokens": job.prompt_tokens, "completion_tokens": job.completion_tokens},
        "timings": {
            "created": _iso(job.created), "started": _iso(job.started), "finished": _iso(job.finished),
            "queued_s": round((job.started - job.created).total_seconds(), 3) if job.started else None,
            "run_s": (round((job.finished - job.started).total_seconds(), 3)
                      if job.finished and job.started else None),
        },
        "url": f"/api/v1/jobs/{job.id}",
    }
    if detail:
        out["result"] = job.result
        out["shards"] = [
            {"index": s.index, "status": s.status, "node": s.node, "attempts": s.attempts,
             "waited_s": s.waited_s, "tries": s.tries, "input_chars": len(s.input), "output_chars": len(s.output),
             "error": s.error,
             "usage": {"prompt_tokens": s.prompt_tokens, "completion_tokens": s.completion_tokens},
             "started": _iso(s.started), "finished": _iso(s.finished)}
            for s in job.shards.order_by("index")
        ]
    return out


class JobList(APIView):
    parser_classes = [JobJSONParser]

    def get_permissions(self) -> list[Any]:
        return [IsOperator()] if self.request.method == "POST" else [IsViewer()]

    @extend_schema(
        operation_id="jobs_list",
        parameters=[OpenApiParameter("status", str, enum=[s.value for s in Job.Status]),
                    OpenApiParameter("limit", int, description="1..500, default 100"),
                    OpenApiParameter("offset", int)],
        responses={200: OpenApiTypes.OBJECT, **errors(400)})
    def get(self, request: Request) -> Response:
        """Jobs newest first: your own, or every job for operators and admins."""
        qs = visible_jobs(request.user)
        fields: dict[str, str] = {}
        wanted = request.query_params.get("status")
        if wanted:
            if wanted not in Job.Status.values:
                fields["status"] = f"one of {', '.join(Job.Status.values)}"
            qs = qs.filter(status=wanted)
        limit, offset = request.query_params.get("limit", "100"), request.query_params.get("offset", "0")
        if not limit.isdigit() or not 1 <= int(limit) <= 500:
            fields["limit"] = "an integer from 1 to 500"
        if not offset.isdigit() or int(offset) > 10**9:
            fields["offset"] = "a non-negative integer"
        if fields:
            name, why = next(iter(fields.items()))
            raise ApiError(400, f"{name}: {why}", fields)
        page = list(qs.order_by("-created")[int(offset):int(offset) + int(limit)])
        return Response({"count": qs.count(), "results": [job_json(j) for j in page]})

    @extend_schema(operation_id="jobs_create", request=OpenApiTypes.OBJECT,
                   responses={201: OpenApiTypes.OBJECT, **errors(400, 413, 415)})
    def post(self, request: Request) -> Response:
        """Submit a job: {model, input | messages, max_tokens?, temperature?, priority? (default batch),
        callback_url?, shard?: {token_budget}, reason?}. It runs through the gateway when capacity allows
        (docs/jobs.md). With a callback_url the answer carries `callback_secret`, the key of the callback's
        X-Switchyard-Signature: shown this once."""
        spec = validation.check(body(request))
        allowed = validation.above_ceiling(spec.priority, has_role(request.user, "admin"),
                                           getattr(request.auth, "priority_class", None))
        if allowed is not None:
            message = (f"priority {spec.priority!r} is above what you may ask for: {allowed!r} (the class of the API "
                       "token this request came with; an admin can issue a token of a higher class)")
            raise ApiError(403, message, {"priority": message})
        job = service.submit(request.user, spec, Origin.from_request(request))
        job.refresh_from_db()
        # The callback's signing key, in this response only (job_json never carries it): null without a callback.
        secret = job.callback_secret or None
        response = Response({**job_json(job, detail=False), "callback_secret": secret}, status=201)
        response["Location"] = f"/api/v1/jobs/{job.id}"
        return response


class JobDetail(APIView):
    permission_classes = [IsViewer]

    @extend_schema(operation_id="jobs_retrieve", responses={200: OpenApiTypes.OBJECT, **errors(404)})
    def get(self, request: Request, job_id: str) -> Response:
        """Status, progress (shards done/total), per-shard node and status, result, error and timings."""
        return Response(job_json(get_visible(request.user, job_id), detail=True))


class JobCancel(APIView):
    permission_classes = [IsOperator]
    parser_classes = [JobJSONParser]

    @extend_schema(operation_id="jobs_cancel", request=OpenApiTypes.OBJECT,
                   responses={200: OpenApiTypes.OBJECT, **errors(400, 404, 409, 413, 415)})
    def post(self, request: Request, job_id: str) -> Response:
        """Cancel a queued or running job ({reason?}); 409 when it is already done, failed or cancelled."""
        job = get_visible(request.user, job_id)
        data = body(request) if request.data else {}
        unknown = sorted(set(data) - {"reason"})
        if unknown:
            raise ApiError(400, f"unknown field(s): {', '.join(unknown)}", {k: "unknown field" for k in unknown})
        reason = text(data.get("reason"), "reason", required=False) or "cancelled via the API"
        if not service.cancel(job, Origin.from_request(request), reason):
            raise ApiError(409, f"job {job.id} is already {job.status}; nothing to cancel")
        job.refresh_from_db()
        return Response(job_json(job, detail=True))
