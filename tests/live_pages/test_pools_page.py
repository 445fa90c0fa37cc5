"""The pools page /pools/: a row per pool with counts and load, each with its nodes linked to their pages."""

from __future__ import annotations

import re
from collections.abc import Callable
from datetime import UTC, datetime
from typing import Any

import pytest
from django.test import Client

from dashboard.fleet.models import Node
from tests.conftest import full_sample, make_node
from tests.live_pages.conftest import ROLES

pytestmark = pytest.mark.usefixtures("clean_samples")


def test_anonymous_is_sent_to_login(client: Client) -> None:
    resp = client.get("/pools/")
    assert resp.status_code == 302
    assert resp["Location"] == "/accounts/login/?next=/pools/"


@pytest.mark.parametrize("role", ROLES)
def test_every_role_sees_the_page(role: str, session_as: Callable[[str], Client]) -> None:
    resp = session_as(role).get("/pools/")
    assert resp.status_code == 200
    assert 'id="pools-table"' in resp.content.decode()


def test_pools_with_counts_and_linked_nodes(push: Any, session_as: Callable[[str], Client]) -> None:
    token = make_node("gpu-a-1", "pool-a")
    make_node("gpu-a-2", "pool-a")
    make_node("gpu-b-1", "pool-b")
    Node.objects.filter(name="gpu-b-1").update(state="cordoned")
    sample = full_sample(1, datetime.now(UTC), gpus=2, base=40.0)
    assert push(token, {"node": "gpu-a-1", "samples": [sample]}).status_code == 200
    html = session_as("viewer").get("/pools/").content.decode()

    def pool_row(name: str) -> str:
        m = re.search(rf'<tbody class="pool" id="pool-{name}" data-pool="{name}">(.*?)</tbody>\s*</table>', html, re.S)
        assert m, name
        return m.group(1)

    a = pool_row("pool-a")
    assert '<td class="num" data-field="nodes">2</td>' in a
    assert '<td class="num count-up" data-field="up">1</td>' in a
    assert '<td class="num count-down" data-field="down">1</td>' in a
    assert '<td class="num" data-field="gpus">2</td>' in a
    util = (sample["gpus"][0]["gpu_util_pct"] + sample["gpus"][1]["gpu_util_pct"]) / 2
    assert f'data-field="gpu_util_pct">{util:.1f} %</td>' in a
    assert '<a href="/nodes/gpu-a-1/">gpu-a-1</a>' in a and '<a href="/nodes/gpu-a-2/">gpu-a-2</a>' in a
    b = pool_row("pool-b")
    assert '<td class="num" data-field="cordoned">1</td>' in b
    assert 'data-field="gpu_util_pct">—</td>' in b  # nothing up: no number, not 0
    assert "/static/switchyard/pools.js" in html


def test_no_pools_says_how_to_make_one(session_as: Callable[[str], Client]) -> None:
    assert "manage.py createnode NAME --pool POOL" in session_as("viewer").get("/pools/").content.decode()
