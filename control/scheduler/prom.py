"""The gateway's own Prometheus metrics (one registry per gateway instance, served at its /metrics to a viewer's
token: node names and policy ids are in them)."""

from __future__ import annotations

from dataclasses import dataclass

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

LATENCY_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120, 300)


@dataclass
class GatewayMetrics:
    registry: CollectorRegistry
    requests: Counter
    retries: Counter
    quarantines: Counter
    latency: Histogram
    ttft: Histogram
    waiting: Gauge
    in_flight: Gauge
    eligible: Gauge
    policy: Gauge

    @classmethod
    def create(cls) -> GatewayMetrics:
        r = CollectorRegistry()
        return cls(
            registry=r,
            requests=Counter("sy_gateway_requests", "Requests answered, by class, HTTP status and cache outcome",
                             ["cls", "status", "cache"], registry=r),
            retries=Counter("sy_gateway_retries", "Attempts repeated on another node after a failure before the "
                                                  "first byte", registry=r),
            quarantines=Counter("sy_gateway_quarantines", "Nodes quarantined after repeated failures", registry=r),
            latency=Histogram("sy_gateway_request_seconds", "Request latency through the gateway (to the last byte)",
                              ["cls"], buckets=LATENCY_BUCKETS, registry=r),
            ttft=Histogram("sy_gateway_ttft_seconds", "Time to the first byte of the node's answer", ["cls"],
                           buckets=LATENCY_BUCKETS, registry=r),
            waiting=Gauge("sy_gateway_queue_waiting", "Requests waiting for capacity, by class", ["cls"], registry=r),
            in_flight=Gauge("sy_gateway_node_in_flight", "Requests this gateway has in flight, by node", ["node"],
                            registry=r),
            eligible=Gauge("sy_gateway_nodes_eligible", "Nodes that may take a request now", registry=r),
            policy=Gauge("sy_gateway_policy_revision", "Revision id of the policy this gateway routes by, by kind",
                         ["kind"], registry=r),
        )
