"""Pages: /jobs/ (list with progress bars) and /jobs/<id>/ (shards, nodes, result). static/switchyard/jobs.js polls."""

from __future__ import annotations

from django.http import Http404, HttpRequest, HttpResponse
from django.shortcuts import render

from control.jobs.api import get_visible, job_json, visible_jobs
from core.api import ApiError
from core.roles import role_required


@role_required("viewer")
def job_list(request: HttpRequest) -> HttpResponse:
    jobs = [job_json(j) for j in visible_jobs(request.user).order_by("-created")[:100]]
    return render(request, "jobs/list.html", {"nav": "jobs", "jobs": jobs})


@role_required("viewer")
def job_detail(request: HttpRequest, job_id: str) -> HttpResponse:
    try:
        job = get_visible(request.user, job_id)
    except ApiError:
        raise Http404("no such job, or not yours") from None
    return render(request, "jobs/detail.html", {"nav": "jobs", "job": job_json(job, detail=True)})
