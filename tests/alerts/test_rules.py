"""The alerts policy schema, the default rules and the migration that gives old installations those rules."""

from __future__ import annotations

import copy
import importlib
from typing import Any

import pytest

from control.alerts import templating
from control.alerts.defaults import DEFAULT_ALERTS
from control.policy.schemas import DocumentError, validate


def test_the_default_document_is_stored_normalised() -> None:
    assert validate("alerts", DEFAULT_ALERTS) == DEFAULT_ALERTS


def test_the_default_rules_are_the_ones_the_issue_asks_for() -> None:
    rules = {r["name"]: r for r in DEFAULT_ALERTS["rules"]}
    want = {
        "gpu-temperature-high": ("temp_c", "gpu", ">", 85.0, 120),
        "gpu-xid": ("xid_count", "gpu", ">", 0.0, 0),
        "gpu-ecc-or-remap": ("ecc_or_remap", "gpu", ">", 0.0, 0),
        "node-not-reporting": ("node_last_seen_age_s", "node", ">", 30.0, 0),
        "queue-high": ("requests_waiting", "node", ">", 50.0, 60),
        "ttft-p95-high": ("ttft_p95_s", "node", ">", 2.0, 120),
        "gpu-throttled": ("throttle_power_or_thermal", "gpu", ">", 0.0, 300),
    }
    assert {n: (r["metric"], r["scope"], r["comparison"], r["threshold"], r["for_s"]) for n, r in rules.items()} \
        == want


def bad(mutate: Any) -> dict[str, str]:
    doc = copy.deepcopy(DEFAULT_ALERTS)
    mutate(doc)
    with pytest.raises(DocumentError) as err:
        validate("alerts", doc)
    return err.value.fields


@pytest.mark.parametrize(("mutate", "path", "message"), [
    (lambda d: d["rules"][0].update(summary="{labels.__class__}"), "rules[0].summary", "unknown"),
    (lambda d: d["rules"][0].update(summary="{0.__class__.__mro__}"), "rules[0].summary", "unknown placeholder"),
    (lambda d: d["rules"][0].update(summary="{value!r}"), "rules[0].summary", "unknown placeholder"),
    (lambda d: d["rules"][0].update(description="temp {value"), "rules[0].description", "unmatched '{'"),
    (lambda d: d["rules"][0].update(summary="{labels.colour}"), "rules[0].summary", "unknown label"),
    (lambda d: d["rules"][0].update(summary="{rule:.2f}"), "rules[0].summary", "bad format"),
    (lambda d: d["rules"][0].update(summary="{value:>99999999}"), "rules[0].summary", "bad format"),
    (lambda d: d["rules"][3].update(scope="gpu"), "rules[3]", "scope gpu needs a per-GPU metric"),
    (lambda d: d["rules"][0].update(matchers=[{"label": "node", "op": "=~", "value": "(("}]),
     "rules[0].matchers[0].value", "invalid regular expression"),
    (lambda d: d["rules"][0].update(keep_firing_for_s=-1), "rules[0].keep_firing_for_s", "greater than"),
    (lambda d: d["rules"][0].update(repeat_interval_s=5), "rules[0]", "at least 60"),
    (lambda d: d["rules"][0].update(metric="nope"), "rules[0].metric", "unknown metric 'nope'"),
    (lambda d: d["rules"].append(dict(d["rules"][0])), "rules", "repeated: gpu-temperature-high"),
])
def test_bad_rules_are_refused_with_the_path(mutate: Any, path: str, message: str) -> None:
    fields = bad(mutate)
    assert path in fields and message in fields[path], fields


def test_templates_render_labels_values_and_literal_braces() -> None:
    t = templating.check("{{x}} GPU {labels.gpu} of {labels.node}: {value:.1f} > {threshold:g} ({rule}) {labels.pool}")
    out = templating.render(t, {"gpu": "3", "node": "n1"}, {"value": 91.26, "threshold": 85.0, "rule": "hot"})
    assert out == "{x} GPU 3 of n1: 91.3 > 85 (hot) "
    assert templating.render("{value}", {}, {"value": None}) == "n/a"


def _no_policies() -> None:
    """Start from no policy at all (transactional tests may see the rows the policy migration seeded)."""
    from django.db import connection

    from control.policy.models import ActivePolicy, PolicyRevision

    with connection.cursor() as cur:  # TRUNCATE: the immutability triggers guard UPDATE and DELETE, not this
        cur.execute(f"TRUNCATE {ActivePolicy._meta.db_table}, {PolicyRevision._meta.db_table} CASCADE")


@pytest.mark.django_db(transaction=True)
def test_migration_adds_default_rules_only_over_the_untouched_empty_seed() -> None:
    from control.policy.models import ActivePolicy, PolicyRevision
    from core.audit.models import AuditEvent

    migration = importlib.import_module("control.alerts.migrations.0002_default_rules")
    from django.apps import apps

    # An old installation: the alerts policy is the empty seed (revision 1, system).
    _no_policies()
    seed = PolicyRevision.objects.create(kind="alerts", scope="global", version=1, document={"rules": []},
                                         author="system", reason="shipped default")
    ActivePolicy.objects.create(kind="alerts", scope="global", revision=seed)
    migration.add_default_rules(apps, None)
    active = ActivePolicy.objects.select_related("revision").get(kind="alerts")
    assert active.revision.version == 2 and active.revision.document == DEFAULT_ALERTS
    assert active.revision.parent_id == seed.pk and active.revision.author == "system"
    event = AuditEvent.objects.filter(action="policy.create", target="policy:alerts").latest("id")
    assert event.actor == "system" and event.details["version"] == 2 and event.after == DEFAULT_ALERTS
    migration.add_default_rules(apps, None)  # a second run changes nothing
    assert PolicyRevision.objects.filter(kind="alerts").count() == 2


@pytest.mark.django_db(transaction=True)
def test_migration_leaves_an_operators_policy_alone() -> None:
    from control.policy.models import ActivePolicy, PolicyRevision

    migration = importlib.import_module("control.alerts.migrations.0002_default_rules")
    from django.apps import apps

    _no_policies()
    v1 = PolicyRevision.objects.create(kind="alerts", scope="global", version=1, document={"rules": []},
                                       author="system", reason="shipped default")
    v2 = PolicyRevision.objects.create(kind="alerts", scope="global", version=2, document={"rules": []},
                                       author="alice", reason="no alerts here", parent=v1)
    ActivePolicy.objects.create(kind="alerts", scope="global", revision=v2)
    migration.add_default_rules(apps, None)
    assert ActivePolicy.objects.get(kind="alerts").revision_id == v2.pk
    assert PolicyRevision.objects.filter(kind="alerts").count() == 2
