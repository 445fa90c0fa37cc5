"""The commit group's own queries (the node refresh, the last_seen update, the token re-check) are prepared once per
connection and then only bound and executed (dashboard/fleet/ingest.py, fetch_prepared): Django turns psycopg's
prepared statements off, which made them parse and plan again at every commit."""

from __future__ import annotations

import pytest
from django.db import connection

from dashboard.fleet import ingest as service
from dashboard.fleet.models import Node
from tests.conftest import make_node

pytestmark = pytest.mark.usefixtures("clean_samples")


def prepared_statements() -> list[str]:
    with connection.cursor() as cur:
        cur.execute("SELECT statement FROM pg_prepared_statements")
        return [row[0] for row in cur.fetchall()]


def test_the_node_refresh_is_prepared_once_and_django_queries_are_not() -> None:
    make_node("gpu-a-1")
    node = Node.objects.get(name="gpu-a-1")
    nodes = [service.NodeInfo(node.pk, "gpu-a-1", "pool-a", "active", None, "", [], "", None)]
    for _ in range(3):
        service.refresh_nodes(nodes)
    for _ in range(10):  # Django's own (client-side bound) queries stay unprepared, as Django wants them
        list(Node.objects.filter(name="gpu-a-1").values_list("pk", flat=True))
    statements = prepared_statements()
    assert sum(s == service._REFRESH_SQL.replace("%s", "$1") for s in statements) == 1, statements
    assert not [s for s in statements if "fleet_node" in s and s != service._REFRESH_SQL.replace("%s", "$1")]
    assert nodes[0].state == "active" and nodes[0].pool == "pool-a"
