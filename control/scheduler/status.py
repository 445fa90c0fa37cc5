"""What a running gateway reports about itself, read from its /metrics (which needs a viewer's or the internal
token unless the gateway runs with `--auth off` or SWITCHYARD_GATEWAY_METRICS_PUBLIC): for scripts and tests that
wait for a gateway to see its nodes or load a policy revision. /healthz is liveness only."""

from __future__ import annotations

from dataclasses import dataclass

import httpx
from prometheus_client.parser import text_string_to_metric_families


@dataclass(frozen=True)
class GatewayStatus:
    eligible: int  # nodes that may take a request (updated once a second)
    policy: dict[str, int]  # kind -> the revision id the gateway routes by (updated when it loads one)


def read_status(base_url: str, token: str | None = None, timeout: float = 2.0) -> GatewayStatus:
    """Raises httpx.HTTPError when the gateway does not answer or refuses the token."""
    headers = {"Authorization": f"Bearer {token}"} if token else {}
    resp = httpx.get(f"{base_url.rstrip('/')}/metrics", headers=headers, timeout=timeout)
    resp.raise_for_status()
    eligible, policy = 0, {}
    for family in text_string_to_metric_families(resp.text):
        for sample in family.samples:
            if sample.name == "sy_gateway_nodes_eligible":
                eligible = int(sample.value)
            elif sample.name == "sy_gateway_policy_revision":
                policy[sample.labels["kind"]] = int(sample.value)
    return GatewayStatus(eligible, policy)
