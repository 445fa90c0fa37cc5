"""Energy per token on the scaling page: shown whenever tokens and power were reported, naming its window."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from django.test import Client

from control.controller import power
from tests.conftest import full_sample, make_node, make_user

pytestmark = pytest.mark.usefixtures("clean_samples")


def push_series(push: Any, token: str, node: str, start: datetime, n: int, watts: float, tokens_s: float,
                energy: bool) -> None:
    """n samples 10 s apart at `watts` per GPU (2 GPUs); with or without the energy counter."""
    samples = []
    for k in range(n):
        s = full_sample(k + 1, start + timedelta(seconds=10 * k), gpus=2)
        s["inference"]["generation_tokens_s"] = tokens_s
        for g in s["gpus"]:
            g["power_w"] = watts
            g["energy_j"] = 1000.0 + watts * 10 * k if energy else None
        samples.append(s)
    resp = push(token, {"node": node, "samples": samples})
    assert resp.status_code == 200 and resp.json()["accepted"] == n, resp.content


def test_gpus_without_an_energy_counter_count_their_power_draw(push: Any) -> None:
    now = datetime.now(UTC).replace(microsecond=0)
    # 2 GPUs x 300 W, 1000 tokens/s: 600 J per 1000 tokens. Counters unsupported (null), power reported.
    push_series(push, make_node("a-1", "pool-a"), "a-1", now - timedelta(minutes=5), 25, 300.0, 1000.0, False)
    assert power.energy_per_token("pool-a", 900, now) == pytest.approx(0.6, rel=1e-9)


def test_the_page_falls_back_to_the_last_15_minutes_and_says_so(push: Any) -> None:
    now = datetime.now(UTC).replace(microsecond=0)
    # A fleet started five minutes ago: no minute rollup yet, so the hour's figure is empty.
    push_series(push, make_node("a-1", "pool-a"), "a-1", now - timedelta(minutes=5), 25, 400.0, 1000.0, True)
    make_node("b-1", "pool-b")  # never reported
    assert power.energy_per_token("pool-a", 3600, now) is None
    by_pool = {p["pool"]: p for p in power.power_summary(now)}
    assert by_pool["pool-a"]["energy_per_token_j"] == pytest.approx(0.8, rel=1e-9)
    assert by_pool["pool-a"]["energy_window"] == "last 15 min"
    assert by_pool["pool-b"]["energy_per_token_j"] is None and by_pool["pool-b"]["energy_window"] is None

    c = Client(HTTP_AUTHORIZATION=f"Token {make_user('vera', 'viewer')}")
    api = {p["pool"]: p for p in c.get("/api/v1/power/").json()}
    assert api["pool-a"]["energy_window"] == "last 15 min"
    c = Client()
    make_user("val", "viewer")
    assert c.login(username="val", password="correct-horse-battery")
    html = c.get("/scaling/").content.decode()
    row = html[html.index('data-power-pool="pool-a"'):]
    row = row[:row.index("</tr>")]
    assert "0.80 J" in row and "last 15 min" in row
