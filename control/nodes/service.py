"""Changing a node's state. The gateway and the controller read Node.state; this is the one place that writes it."""

from __future__ import annotations

import logging
from dataclasses import dataclass

from django.db import transaction

from core.audit.context import Origin
from core.audit.record import record
from dashboard.fleet.models import Node
from dashboard.metrics.latest import redis_client

log = logging.getLogger(__name__)
# Gateways subscribe to this channel and reload the node registry at once (polling every second is the fallback).
NODES_CHANNEL = "sy:nodes"

# What each action sets. Draining lets in-flight work finish and takes no new work; cordoned takes no new work.
ACTIONS = {"drain": Node.State.DRAINING, "cordon": Node.State.CORDONED, "uncordon": Node.State.ACTIVE}


@dataclass
class Outcome:
    node: Node
    previous: str
    changed: bool


def apply(name: str, action: str, reason: str, origin: Origin) -> Outcome:
    """Set the node's state; a no-op (already in that state) changes and audits nothing. Node.DoesNotExist when
    there is no such node."""
    if action not in ACTIONS:
        raise ValueError(f"unknown node action {action!r}")
    wanted = ACTIONS[action]
    with transaction.atomic():
        node = Node.objects.select_for_update().select_related("pool").get(name=name)
        previous = node.state
        if previous == wanted:
            return Outcome(node, previous, False)
        node.state = wanted
        node.save(update_fields=["state"])
        record(origin, f"node.{action}", f"node:{node.name}", reason, before={"state": previous},
               after={"state": wanted}, details={"pool": node.pool.name})
        transaction.on_commit(lambda: _announce(name))
    return Outcome(node, previous, True)


def _announce(name: str) -> None:
    """Tell gateways (sy:nodes) after the commit; a Redis failure is logged, never fails the action."""
    try:
        redis_client().publish(NODES_CHANNEL, name)
    except Exception as exc:  # noqa: BLE001 - the state change is stored; gateways poll every second anyway
        log.warning("node %s changed but not announced on %s: %s", name, NODES_CHANNEL, exc)
