"""The merge runs exactly once when the last shards finish at the same moment (compare-and-set on the job row)."""

from __future__ import annotations

import threading

import pytest
from django.contrib.auth import get_user_model
from django.db import connection

from control.jobs import service
from control.jobs.models import Job, Shard
from control.webhooks.models import Delivery, Receiver

pytestmark = pytest.mark.django_db(transaction=True)


def race(shards: list[Shard]) -> list[bool]:
    barrier = threading.Barrier(len(shards))
    merged: list[bool] = [False] * len(shards)
    errors: list[BaseException] = []

    def finish(i: int, shard: Shard) -> None:
        try:
            barrier.wait()
            merged[i] = service.complete(shard, f"node-{i}", f"out-{shard.index}", 3, 5)
        except BaseException as exc:  # noqa: BLE001 - reported by the main thread
            errors.append(exc)
        finally:
            connection.close()

    threads = [threading.Thread(target=finish, args=(i, s)) for i, s in enumerate(shards)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(30)
    assert not errors, errors
    return merged


@pytest.mark.usefixtures("redis_db")
def test_shards_finishing_together_merge_once_and_notify_once() -> None:
    owner = get_user_model().objects.create_user("op")
    Receiver.objects.create(name="jobs", url="https://hooks.example.com/x", secret="s3cret-s3cret", events=["job"])
    for _ in range(8):
        job = Job.objects.create(owner=owner, model="m", input="x", priority="batch", shards_total=4,
                                 status=Job.Status.RUNNING)
        shards = [Shard.objects.create(job=job, index=i, input=f"in-{i}", status=Shard.Status.RUNNING)
                  for i in range(4)]
        merged = race(shards)
        job.refresh_from_db()
        assert merged.count(True) == 1
        assert job.status == "done" and job.shards_done == 4
        assert job.result == "out-0\n\nout-1\n\nout-2\n\nout-3"
        assert (job.prompt_tokens, job.completion_tokens) == (12, 20)
        assert Delivery.objects.filter(event="job", payload__id=str(job.id)).count() == 1
        # A redelivered task for a finished shard changes nothing.
        assert service.complete(shards[0], "node-x", "again", 1, 1) is False
        job.refresh_from_db()
        assert job.shards_done == 4 and job.result.startswith("out-0")
