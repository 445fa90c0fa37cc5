"""Alert test helpers: nodes with live snapshots in the real Redis, rules set through the policy service."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest

from control.policy import service as policy
from core.audit.context import Origin
from dashboard.fleet.models import Node
from dashboard.metrics.latest import store_latest
from tests.conftest import make_node
from tests.control.conftest import _fast_passwords, api, browser, tokens  # noqa: F401  (shared role fixtures)
from tests.webhooks.conftest import receiver  # noqa: F401  (a real local HTTP receiver)

T0 = datetime(2026, 11, 28, 14, 0, tzinfo=UTC)


def at(s: float) -> datetime:
    return T0 + timedelta(seconds=s)


def set_rules(*rules: dict[str, Any]) -> None:
    current = policy.active("alerts")
    policy.create_revision("alerts", {"rules": list(rules)}, "test rules", current.pk, Origin.system("test"))


def rule(name: str = "gpu-hot", **kw: Any) -> dict[str, Any]:
    return {"name": name, "metric": "temp_c", "scope": "gpu", "comparison": ">", "threshold": 85, "for_s": 30,
            "severity": "critical", "summary": "GPU {labels.gpu} of {labels.node} at {value:.0f} °C", **kw}


@pytest.fixture
def fleet(db: None, redis_db: Any) -> Iterator[Callable[..., None]]:
    """fleet(node, pool, now, gpus=[{...}], inference={...}): the node exists and its latest sample is fresh at
    `now` (received then), last_seen too."""
    made: set[str] = set()

    def publish(node: str, now: datetime, gpus: list[dict[str, Any]] | None = None, pool: str = "pool-a",
                inference: dict[str, Any] | None = None, host: dict[str, Any] | None = None) -> None:
        if node not in made:
            make_node(node, pool)
            made.add(node)
        Node.objects.filter(name=node).update(last_seen=now)
        store_latest(node, {
            "node": node, "pool": pool, "state": "active", "ts": now.isoformat(), "seq": 1,
            "received": now.isoformat(), "host": host or {}, "inference": inference or {},
            "gpus": [{"index": i, "uuid": f"GPU-{i}", "name": "H100", **g} for i, g in enumerate(gpus or [])]})

    yield publish
