"""The job pages in a real browser (Debian's chromium): progress bars and shard rows follow the job live."""

from __future__ import annotations

from typing import Any

import pytest
from django.contrib.auth import get_user_model

from control.jobs.models import Job, Shard
from tests.browser.conftest import Server, login, screenshot

pytestmark = pytest.mark.browser


@pytest.fixture(autouse=True)
def _fast_passwords() -> None:
    """Keep the real password hasher: the server process logging the user in does not know the tests' MD5 one."""


def test_job_page_follows_progress_until_done(page: Any, server: Server) -> None:
    login(page, server, "olga", "operator")
    owner = get_user_model().objects.get(username="olga")
    job = Job.objects.create(owner=owner, model="m", input="a\n\nb", priority="batch", shards_total=2,
                             status=Job.Status.RUNNING)
    for i in range(2):
        Shard.objects.create(job=job, index=i, input="ab"[i], status=Shard.Status.RUNNING)
    page.goto(f"{server.url}/jobs/{job.id}/")
    assert page.locator("#job-facts progress").get_attribute("value") == "0"
    Shard.objects.filter(job=job, index=0).update(status="done", node="sim-a", output="A")
    Job.objects.filter(pk=job.pk).update(shards_done=1)
    page.wait_for_function("() => document.querySelector('#job-facts progress').value === 1", timeout=10_000)
    assert page.locator('#job-shards tr[data-shard="0"]').inner_text().split("\t")[2] == "sim-a"
    Job.objects.filter(pk=job.pk).update(shards_done=2, status="done", result="A\n\nB")
    page.wait_for_function("() => document.getElementById('job-result').textContent === 'A\\n\\nB'", timeout=10_000)
    page.goto(f"{server.url}/jobs/")
    assert page.locator(f'tr[data-job="{job.id}"] [data-field=status]').inner_text() == "done"
    screenshot(page, "jobs")
    assert page.js_errors == []
