"""The evaluator against real PostgreSQL and Redis with a controllable clock."""

from __future__ import annotations

from typing import Any

import pytest

from control.alerts import evaluator
from control.alerts.models import Alert
from control.alerts.summary import firing_counts
from control.webhooks.models import Delivery, Receiver
from dashboard.fleet.models import Node
from tests.alerts.conftest import at, rule, set_rules

pytestmark = pytest.mark.django_db


@pytest.fixture
def hook(db: None) -> Receiver:
    return Receiver.objects.create(name="oncall", url="https://hooks.example.com/am", secret="x" * 20,
                                   events=["alert"])


def sent() -> list[dict[str, Any]]:
    """Every alert queued to receivers so far, in order, as (status, alertname, labels)."""
    out = []
    for d in Delivery.objects.order_by("id"):
        out.extend(d.payload["alerts"])
    return out


def test_hot_gpu_goes_pending_then_firing_then_resolved_with_one_notification_each(fleet: Any, hook: Any) -> None:
    set_rules(rule(for_s=30))
    fleet("gpu-a-1", at(0), gpus=[{"temp_c": 90.0}, {"temp_c": 60.0}])
    evaluator.evaluate(at(0))
    a = Alert.objects.get()
    assert a.state == "pending" and a.labels == {"alertname": "gpu-hot", "severity": "critical", "pool": "pool-a",
                                                 "node": "gpu-a-1", "gpu": "0"}
    assert sent() == []
    fleet("gpu-a-1", at(20), gpus=[{"temp_c": 91.0}, {"temp_c": 60.0}])
    evaluator.evaluate(at(20))
    assert Alert.objects.get().state == "pending"
    fleet("gpu-a-1", at(30), gpus=[{"temp_c": 92.0}, {"temp_c": 60.0}])
    evaluator.evaluate(at(30))
    a = Alert.objects.get()
    assert a.state == "firing" and a.value == 92.0 and a.annotations["summary"] == "GPU 0 of gpu-a-1 at 92 °C"
    for s in (40, 50):  # still firing: nothing new is sent
        fleet("gpu-a-1", at(s), gpus=[{"temp_c": 93.0}, {"temp_c": 60.0}])
        evaluator.evaluate(at(s))
    assert [x["status"] for x in sent()] == ["firing"]
    assert firing_counts() == {"critical": 1, "warning": 0, "info": 0}
    fleet("gpu-a-1", at(60), gpus=[{"temp_c": 70.0}, {"temp_c": 60.0}])
    evaluator.evaluate(at(60))
    evaluator.evaluate(at(70))
    a = Alert.objects.get()
    assert a.state == "resolved" and a.resolved_at == at(60)
    msgs = sent()
    assert [x["status"] for x in msgs] == ["firing", "resolved"]
    assert msgs[0]["fingerprint"] == msgs[1]["fingerprint"] == a.fingerprint
    assert msgs[0]["startsAt"] == "2026-11-28T14:00:00.000Z" and msgs[1]["endsAt"] == "2026-11-28T14:01:00.000Z"
    assert msgs[0]["endsAt"] == "0001-01-01T00:00:00Z"
    assert firing_counts() == {"critical": 0, "warning": 0, "info": 0}


def test_rerunning_an_evaluation_never_duplicates_alerts_or_notifications(fleet: Any, hook: Any) -> None:
    set_rules(rule(for_s=0))
    fleet("gpu-a-1", at(0), gpus=[{"temp_c": 90.0}])
    for _ in range(3):  # e.g. an evaluator restarted and re-ran the same tick
        evaluator.evaluate(at(0))
    evaluator.evaluate(at(10))
    assert Alert.objects.count() == 1 and len(sent()) == 1


def test_a_second_live_alert_for_one_fingerprint_is_refused_by_the_database(fleet: Any) -> None:
    from django.db import IntegrityError, transaction

    set_rules(rule(for_s=0))
    fleet("gpu-a-1", at(0), gpus=[{"temp_c": 90.0}])
    evaluator.evaluate(at(0))
    a = Alert.objects.get()
    with pytest.raises(IntegrityError), transaction.atomic():
        Alert.objects.create(fingerprint=a.fingerprint, rule=a.rule, labels=a.labels, severity="critical",
                             state="firing", threshold=85, active_at=at(0))


def test_the_evaluator_skips_while_another_holds_the_lock(fleet: Any) -> None:
    import psycopg
    from django.db import connection

    from tests.conftest import database_url_for_subprocess

    set_rules(rule(for_s=0))
    fleet("gpu-a-1", at(0), gpus=[{"temp_c": 90.0}])
    assert connection.settings_dict["NAME"]
    with psycopg.connect(database_url_for_subprocess(), autocommit=True) as other:
        other.execute("SELECT pg_advisory_lock(%s)", [evaluator.LOCK_KEY])
        assert evaluator.evaluate(at(0)) is None
        assert Alert.objects.count() == 0
        other.execute("SELECT pg_advisory_unlock(%s)", [evaluator.LOCK_KEY])
    assert evaluator.evaluate(at(0)) is not None and Alert.objects.count() == 1


def test_a_new_episode_after_resolution_is_a_new_row_and_notifies_again(fleet: Any, hook: Any) -> None:
    set_rules(rule(for_s=0))
    for s, temp in ((0, 90.0), (10, 70.0), (20, 95.0)):
        fleet("gpu-a-1", at(s), gpus=[{"temp_c": temp}])
        evaluator.evaluate(at(s))
    assert list(Alert.objects.order_by("id").values_list("state", flat=True)) == ["resolved", "firing"]
    assert [x["status"] for x in sent()] == ["firing", "resolved", "firing"]


def test_keep_firing_for_and_xid_events(fleet: Any, hook: Any) -> None:
    set_rules({"name": "gpu-xid", "metric": "xid_count", "scope": "gpu", "comparison": ">", "threshold": 0,
               "keep_firing_for_s": 60, "severity": "critical"})
    fleet("gpu-a-1", at(0), gpus=[{"xid_count": 1, "xid_last": 79}])
    evaluator.evaluate(at(0))
    for s in (10, 30, 50):  # the XID was an event in one interval; the next samples count 0
        fleet("gpu-a-1", at(s), gpus=[{"xid_count": 0}])
        evaluator.evaluate(at(s))
        assert Alert.objects.get().state == "firing"
    fleet("gpu-a-1", at(60), gpus=[{"xid_count": 0}])
    evaluator.evaluate(at(60))
    assert Alert.objects.get().state == "resolved"
    assert [x["status"] for x in sent()] == ["firing", "resolved"]


def test_flapping_pending_rows_are_not_kept(fleet: Any, hook: Any) -> None:
    set_rules(rule(for_s=30))
    for i in range(10):
        fleet("gpu-a-1", at(i * 10), gpus=[{"temp_c": 90.0 if i % 2 == 0 else 80.0}])
        evaluator.evaluate(at(i * 10))
    assert Alert.objects.count() == 0 and sent() == []


def test_node_not_reporting_uses_last_seen(fleet: Any, hook: Any) -> None:
    set_rules({"name": "node-not-reporting", "metric": "node_last_seen_age_s", "scope": "node", "comparison": ">",
               "threshold": 30, "severity": "critical", "summary": "{labels.node} silent for {value:.0f} s"})
    fleet("gpu-a-1", at(0))
    evaluator.evaluate(at(20))
    assert Alert.objects.count() == 0
    evaluator.evaluate(at(45))
    a = Alert.objects.get()
    assert a.state == "firing" and a.labels["node"] == "gpu-a-1" and a.annotations["summary"] == \
        "gpu-a-1 silent for 45 s"
    Node.objects.filter(name="gpu-a-1").update(last_seen=at(50))
    evaluator.evaluate(at(55))
    assert Alert.objects.get().state == "resolved"


def test_a_node_the_controller_removed_is_not_reported_silent(fleet: Any, hook: Any) -> None:
    set_rules({"name": "node-not-reporting", "metric": "node_last_seen_age_s", "scope": "node", "comparison": ">",
               "threshold": 30, "severity": "critical", "summary": "{labels.node} silent for {value:.0f} s"})
    fleet("gpu-a-1", at(0))
    Node.objects.filter(name="gpu-a-1").update(state="removed")  # scaled in: silent on purpose
    evaluator.evaluate(at(45))
    evaluator.evaluate(at(120))
    assert Alert.objects.count() == 0


def test_a_stale_snapshot_does_not_keep_a_sample_alert_firing(fleet: Any) -> None:
    set_rules(rule(for_s=0))
    fleet("gpu-a-1", at(0), gpus=[{"temp_c": 90.0}])
    evaluator.evaluate(at(0))
    evaluator.evaluate(at(120))  # no sample for 2 minutes: the temperature is unknown, not 90 °C
    assert Alert.objects.get().state == "resolved"


def test_redis_unreachable_leaves_sample_alerts_as_they_are(fleet: Any, monkeypatch: Any) -> None:
    from control.alerts import series

    set_rules(rule(for_s=0))
    fleet("gpu-a-1", at(0), gpus=[{"temp_c": 90.0}])
    evaluator.evaluate(at(0))

    def down() -> None:
        raise ConnectionError("redis down")

    monkeypatch.setattr(series, "all_latest", down)
    result = evaluator.evaluate(at(10))
    assert result is not None and result.skipped_rules == ["gpu-hot"]
    assert Alert.objects.get().state == "firing"


@pytest.mark.parametrize(("mask", "fires"), [(0x4, True), (0x8, True), (0x20, True), (0x40, True), (0x80, True),
                                             (0x1, False), (0x2, False), (0x0, False)])
def test_throttle_derived_metric(fleet: Any, mask: int, fires: bool) -> None:
    set_rules({"name": "gpu-throttled", "metric": "throttle_power_or_thermal", "scope": "gpu", "comparison": ">",
               "threshold": 0, "severity": "warning"})
    fleet("gpu-a-1", at(0), gpus=[{"clocks_event_reasons": mask}])
    evaluator.evaluate(at(0))
    assert Alert.objects.filter(state="firing").exists() is fires


@pytest.mark.parametrize(("gpu", "fires"), [
    ({"ecc_uncorrected_total": 2, "row_remap_pending": 0}, True), ({"row_remap_pending": 1}, True),
    ({"ecc_uncorrected_total": 0, "row_remap_pending": 0, "remapped_rows_uncorrectable": 0}, False),
    ({"ecc_corrected_total": 50}, False)])
def test_ecc_or_remap_derived_metric(fleet: Any, gpu: dict[str, int], fires: bool) -> None:
    set_rules({"name": "gpu-ecc", "metric": "ecc_or_remap", "scope": "gpu", "comparison": ">", "threshold": 0,
               "severity": "critical"})
    fleet("gpu-a-1", at(0), gpus=[gpu])
    evaluator.evaluate(at(0))
    assert Alert.objects.filter(state="firing").exists() is fires


def test_matchers_and_pool_scope_aggregation(fleet: Any) -> None:
    set_rules(rule("pool-queue", metric="requests_waiting", scope="pool", aggregate="sum", threshold=50, for_s=0,
                   matchers=[{"label": "pool", "op": "=~", "value": "pool-(a|b)"},
                             {"label": "node", "op": "!=", "value": "gpu-a-9"}], summary=""))
    fleet("gpu-a-1", at(0), pool="pool-a", inference={"requests_waiting": 30})
    fleet("gpu-a-2", at(0), pool="pool-a", inference={"requests_waiting": 30})
    fleet("gpu-a-9", at(0), pool="pool-a", inference={"requests_waiting": 500})  # excluded by the matcher
    fleet("gpu-b-1", at(0), pool="pool-b", inference={"requests_waiting": 40})
    fleet("gpu-c-1", at(0), pool="pool-c", inference={"requests_waiting": 900})  # not matched
    evaluator.evaluate(at(0))
    [a] = Alert.objects.all()
    assert a.labels == {"alertname": "pool-queue", "severity": "critical", "pool": "pool-a"} and a.value == 60
    assert a.annotations["summary"] == "pool-queue: requests_waiting > 50 (pool=pool-a)"


def test_a_deleted_rule_resolves_its_firing_alerts(fleet: Any, hook: Any) -> None:
    set_rules(rule(for_s=0))
    fleet("gpu-a-1", at(0), gpus=[{"temp_c": 90.0}])
    evaluator.evaluate(at(0))
    set_rules()
    evaluator.evaluate(at(10))
    assert Alert.objects.get().state == "resolved"
    assert [x["status"] for x in sent()] == ["firing", "resolved"]


def test_repeat_interval_renotifies_a_still_firing_alert(fleet: Any, hook: Any) -> None:
    set_rules(rule(for_s=0, repeat_interval_s=60))
    for s in range(0, 130, 10):
        fleet("gpu-a-1", at(s), gpus=[{"temp_c": 90.0}])
        evaluator.evaluate(at(s))
    assert [x["status"] for x in sent()] == ["firing", "firing", "firing"]  # at 0, 60 and 120


def test_null_metrics_are_absent_not_zero(fleet: Any) -> None:
    set_rules(rule("too-cold", comparison="<", threshold=10, for_s=0))
    fleet("gpu-a-1", at(0), gpus=[{"temp_c": None}])
    evaluator.evaluate(at(0))
    assert Alert.objects.count() == 0


def test_a_rule_that_cannot_be_evaluated_does_not_stop_the_others(fleet: Any, monkeypatch: Any) -> None:
    from control.alerts import series

    set_rules(rule("broken", for_s=0), rule("gpu-hot", for_s=0))
    fleet("gpu-a-1", at(0), gpus=[{"temp_c": 90.0}])
    real = series.values

    def values(f: Any, r: dict[str, Any]) -> Any:
        if r["name"] == "broken":  # e.g. a stored document from an older schema the code no longer understands
            raise KeyError("aggregate")
        return real(f, r)

    monkeypatch.setattr(series, "values", values)
    result = evaluator.evaluate(at(0))
    assert result is not None and result.skipped_rules == ["broken"]
    assert list(Alert.objects.values_list("rule", "state")) == [("gpu-hot", "firing")]


def test_an_evaluation_writes_its_alerts_in_the_same_few_statements_however_many_there_are(fleet: Any) -> None:
    """The evaluator holds every live alert locked while it writes: its writes are batched, so an evaluation
    sends as many statements for 40 alerts as for 2 (creating pending ones, stepping them, keeping them firing)."""
    from django.db import connection
    from django.test.utils import CaptureQueriesContext

    set_rules(rule(for_s=30))

    def statements(node: str, hot: int) -> list[int]:
        counts = []
        for s in (0, 10, 40, 50):  # pending created, pending stepped, firing (notifies), firing kept
            fleet(node, at(s), gpus=[{"temp_c": 95.0}] * hot)
            with CaptureQueriesContext(connection) as queries:
                evaluator.evaluate(at(s))
            counts.append(len(queries))
        assert Alert.objects.filter(state="firing", labels__node=node).count() == hot
        return [counts[0], counts[1], counts[3]]  # the firing transition also claims one notification per alert

    few = statements("gpu-a-1", 2)
    Alert.objects.all().delete()
    fleet("gpu-a-1", at(50), gpus=[{"temp_c": 40.0}] * 2)
    many = statements("gpu-a-2", 40)
    assert many == few
