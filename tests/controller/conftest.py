"""Fixtures of the controller tests: role clients (from tests/control), a simulated fleet with its control API for
the `local` provider, and a pool bound to it."""

from __future__ import annotations

from collections.abc import Iterator
from datetime import UTC, datetime
from typing import Any

import pytest

from agents.sim.background import BackgroundFleet
from tests.control.conftest import _fast_passwords, api, browser, tokens  # noqa: F401  (fixtures)


@pytest.fixture
def fleet() -> Iterator[BackgroundFleet]:
    """A simulated fleet without agents: its control API is what the local provider drives."""
    with BackgroundFleet(pool="ctl", gpus=1, time_scale=20.0, seed=5, control_port=0) as f:
        yield f


def snapshot(node: str, pool: str, *, running: int = 0, waiting: int = 0, ts: datetime | None = None) -> None:
    """Write a node's latest sample into Redis the way ingest does (what the controller reads for drains)."""
    from dashboard.metrics.latest import store_latest

    ts = ts or datetime.now(UTC)
    store_latest(node, {"node": node, "pool": pool, "state": "active", "ts": ts.isoformat(), "seq": 1,
                        "inference": {"requests_running": running, "requests_waiting": waiting}, "host": {},
                        "gpus": []})


def bind_local(pool: str, fleet: BackgroundFleet, **config: Any) -> None:
    from control.controller import bindings
    from core.audit.context import Origin
    from dashboard.fleet.models import Pool

    Pool.objects.get_or_create(name=pool)
    bindings.set_provider(pool, "local", {"url": fleet.control_url, "boot_delay_s": 0, **config}, True,
                          "test setup", Origin.system("test"))
