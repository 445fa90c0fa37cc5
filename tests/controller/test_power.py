"""Power capping: the policy's caps per GPU (pure), the reconcile loop (desired caps in Redis, audits, convergence,
alerts), ingest's side (the caps in the answer, `applied` kept), energy per generated token, the page's summary.

Time is passed in (`now`), never waited for.
"""

from __future__ import annotations

import json
from datetime import UTC, datetime, timedelta
from typing import Any
from zoneinfo import ZoneInfo

import orjson
import pytest

from control.controller import power
from control.policy import service as policies
from control.webhooks.models import Delivery, Receiver
from core.audit.context import Origin
from core.audit.models import AuditEvent
from dashboard.fleet.ingest import POWER_DESIRED_KEY
from dashboard.fleet.models import Node
from dashboard.metrics import rollups
from dashboard.metrics.latest import latest, redis_client, store_latest
from tests.conftest import full_sample, make_node

PARIS = ZoneInfo("Europe/Paris")
T0 = datetime(2025, 3, 4, 14, 0, tzinfo=UTC)  # 14:00 UTC, inside the default peak hours 12-18


def doc(default: dict[str, Any] | None = None, **pools: dict[str, Any]) -> dict[str, Any]:
    return {"default": default or {"mode": "uncapped"}, "pools": pools}


def defaults(*watts: float | None) -> dict[str, float | None]:
    return {str(i): w for i, w in enumerate(watts)}


# -- desired_caps (pure) -------------------------------------------------------------------------------------

def test_cap_puts_cap_w_on_every_gpu_even_when_the_default_is_unknown() -> None:
    d = doc(**{"pool-a": {"mode": "cap", "cap_w": 450}})
    assert power.desired_caps(d, "pool-a", defaults(700.0, None), T0) == {"0": 450.0, "1": 450.0}
    assert power.desired_caps(d, "pool-b", defaults(700.0), T0) == {}  # the default entry: uncapped
    assert power.desired_caps(d, "pool-a", {}, T0) == {}  # no GPU reported yet


def test_cap_pct_takes_each_cards_default_and_skips_an_unknown_one() -> None:
    d = doc({"mode": "cap_pct", "pct": 80})
    got = power.desired_caps(d, "any", {"0": 700.0, "1": 400.0, "2": None, "10": 350.0}, T0)
    assert got == {"0": 560.0, "1": 320.0, "10": 280.0}
    assert list(got) == ["0", "1", "10"]  # GPU order, not string order


@pytest.mark.parametrize(("hour", "minute", "capped"), [
    (11, 59, True), (12, 0, False), (17, 59, False), (18, 0, True), (3, 0, True),
])
def test_off_peak_caps_outside_the_peak_hours_only(hour: int, minute: int, capped: bool) -> None:
    d = doc({"mode": "off_peak", "pct": 50, "peak_start_hour": 12, "peak_end_hour": 18})
    now = T0.replace(hour=hour, minute=minute)
    assert power.desired_caps(d, "p", defaults(700.0), now) == ({"0": 350.0} if capped else {})


def test_off_peak_hours_can_wrap_past_midnight_and_end_at_24() -> None:
    night = doc({"mode": "off_peak", "pct": 50, "peak_start_hour": 22, "peak_end_hour": 6})
    assert power.desired_caps(night, "p", defaults(700.0), T0.replace(hour=23)) == {}
    assert power.desired_caps(night, "p", defaults(700.0), T0.replace(hour=5, minute=59)) == {}
    assert power.desired_caps(night, "p", defaults(700.0), T0.replace(hour=6)) == {"0": 350.0}
    evening = doc({"mode": "off_peak", "pct": 50, "peak_start_hour": 20, "peak_end_hour": 24})
    assert power.desired_caps(evening, "p", defaults(700.0), T0.replace(hour=23, minute=59)) == {}
    assert power.desired_caps(evening, "p", defaults(700.0), T0.replace(hour=0)) == {"0": 350.0}
    # Hours are UTC whatever the zone of `now`: 12:30 in Paris (UTC+1 in March) is 11:30 UTC, before the peak.
    day = doc({"mode": "off_peak", "pct": 50})
    assert power.desired_caps(day, "p", defaults(700.0), datetime(2025, 3, 4, 12, 30, tzinfo=PARIS)) == {"0": 350.0}


# -- reconcile -----------------------------------------------------------------------------------------------

def set_policy(document: dict[str, Any], reason: str = "test: cap the pool") -> Any:
    return policies.create_revision("power", document, reason, policies.active("power").pk,
                                    Origin.system("test")).revision


def report(node: str, pool: str, limits: list[float | None], now: datetime, *, applied: dict[str, Any] | None = None,
           default: float = 700.0, power_w: float = 300.0) -> None:
    """What ingest keeps of a node's push: its latest sample (enforced limit per GPU) with its `applied` block."""
    block = {"power_default_w": {str(i): default for i in range(len(limits))}, **(applied or {})}
    store_latest(node, {"node": node, "pool": pool, "state": "active", "ts": now.isoformat(), "seq": 1,
                        "host": {}, "inference": {}, "applied": block,
                        "gpus": [{"index": i, "power_limit_w": w, "power_w": power_w} for i, w in enumerate(limits)]})


def desired() -> dict[str, dict[str, float]]:
    return {k.decode(): json.loads(v) for k, v in redis_client().hgetall(POWER_DESIRED_KEY).items()}


def audits(action: str) -> list[AuditEvent]:
    return list(AuditEvent.objects.filter(action=action).order_by("id"))


def capped(limits: dict[str, float], asked: dict[str, float] | None = None) -> dict[str, Any]:
    return {"power_limit_w": limits, "power_asked_w": asked or limits}


@pytest.fixture
def fleet(db: None, redis_db: Any) -> list[str]:
    for name, pool in (("a-1", "pool-a"), ("a-2", "pool-a"), ("b-1", "pool-b")):
        make_node(name, pool)
        report(name, pool, [700.0, 700.0], T0)
    return ["a-1", "a-2", "b-1"]


def test_reconcile_writes_the_caps_audits_once_per_pool_and_is_idempotent(fleet: list[str]) -> None:
    first = power.reconcile(T0)
    assert desired() == {"a-1": {}, "a-2": {}, "b-1": {}}  # uncapped by default: every node told so
    assert first.changed == {} and audits("power.cap") == []  # nothing was capped, so nothing to audit

    rev = set_policy(doc(**{"pool-a": {"mode": "cap_pct", "pct": 80}}))
    result = power.reconcile(T0)
    assert desired() == {"a-1": {"0": 560.0, "1": 560.0}, "a-2": {"0": 560.0, "1": 560.0}, "b-1": {}}
    assert result.changed == {"pool-a": ["a-1", "a-2"]}
    (event,) = audits("power.cap")
    assert event.actor == "controller" and event.target == "pool:pool-a"
    assert event.reason == (f"power policy v{rev.version} (revision {rev.pk}) for pool pool-a, mode cap_pct: 80 % "
                            "of each GPU's default limit: caps changed on 2 node(s)")
    assert event.before == {"a-1": {}, "a-2": {}}
    assert event.after == {"a-1": {"0": 560.0, "1": 560.0}, "a-2": {"0": 560.0, "1": 560.0}}
    assert event.details == {"revision": rev.pk, "version": rev.version, "mode": "cap_pct", "nodes": 2}

    again = power.reconcile(T0 + timedelta(seconds=15))
    assert again.changed == {} and len(audits("power.cap")) == 1  # nothing changed: nothing written or audited
    assert desired()["a-1"] == {"0": 560.0, "1": 560.0}


def test_a_removed_or_deleted_node_loses_its_power_state(fleet: list[str]) -> None:
    set_policy(doc({"mode": "cap", "cap_w": 500}))
    power.reconcile(T0)
    assert set(desired()) == {"a-1", "a-2", "b-1"}
    Node.objects.filter(name="a-2").update(state=Node.State.REMOVED)
    Node.objects.filter(name="b-1").delete()
    result = power.reconcile(T0)
    assert result.removed == ["a-2", "b-1"]
    r = redis_client()
    for key in (POWER_DESIRED_KEY, power.STATE_KEY):
        assert sorted(k.decode() for k in r.hkeys(key)) == ["a-1"], key
    assert len(audits("power.cap")) == 2  # one per pool when capped; removal is no change of caps


def test_convergence_is_audited_once_and_a_clamp_is_named(fleet: list[str]) -> None:
    set_policy(doc({"mode": "cap", "cap_w": 150}))  # below the boards' 200 W floor
    result = power.reconcile(T0)
    assert result.status == {"a-1": "pending", "a-2": "pending", "b-1": "pending"}
    # a-1 applied what the board allows; a-2 has not heard yet; b-1's board took 150 W exactly.
    report("a-1", "pool-a", [200.0, 200.0], T0 + timedelta(seconds=10),
           applied=capped({"0": 200.0, "1": 200.0}, {"0": 150.0, "1": 150.0}))
    report("b-1", "pool-b", [150.0, 150.4], T0 + timedelta(seconds=10), applied=capped({"0": 150.0, "1": 150.0}))
    result = power.reconcile(T0 + timedelta(seconds=15))
    assert result.status == {"a-1": "clamped", "a-2": "pending", "b-1": "converged"}
    assert result.converged == ["a-1", "b-1"]
    a, b = audits("power.converged")
    assert (a.target, b.target) == ("pool:pool-a", "pool:pool-b")
    assert a.reason.endswith("run the power caps of policy v2; 1 clamped by the board's limits")
    assert a.details["clamped"] == {"a-1": [{"gpu": 0, "asked_w": 150.0, "applied_w": 200.0},
                                            {"gpu": 1, "asked_w": 150.0, "applied_w": 200.0}]}
    assert b.reason == "1 node(s) of pool pool-b run the power caps of policy v2"
    assert power.reconcile(T0 + timedelta(seconds=30)).converged == []
    assert len(audits("power.converged")) == 2


def test_an_old_clamp_does_not_pass_for_the_new_cap(fleet: list[str]) -> None:
    set_policy(doc({"mode": "cap", "cap_w": 150}))
    power.reconcile(T0)
    report("a-1", "pool-a", [200.0, 200.0], T0, applied=capped({"0": 200.0, "1": 200.0}, {"0": 150.0, "1": 150.0}))
    set_policy(doc({"mode": "cap", "cap_w": 100}))  # still clamped to 200 W, but the agent was asked for 150 W
    assert power.reconcile(T0).status["a-1"] == "pending"


def test_a_node_not_converged_in_time_is_audited_and_alerted_once_then_resolved(fleet: list[str]) -> None:
    Receiver.objects.create(name="oncall", url="https://hooks.example.com/x", secret="s" * 20, events=["alert"])
    set_policy(doc({"mode": "cap", "cap_w": 400}))
    power.reconcile(T0)
    for name, pool in (("a-1", "pool-a"), ("a-2", "pool-a"), ("b-1", "pool-b")):
        if name != "a-2":  # a-2's agent never applies the cap
            report(name, pool, [400.0, 400.0], T0, applied=capped({"0": 400.0, "1": 400.0}))
    for s in (0, 60, 119):
        report("a-2", "pool-a", [700.0, 700.0], T0 + timedelta(seconds=s))
        assert power.reconcile(T0 + timedelta(seconds=s)).not_converged == []
    report("a-2", "pool-a", [700.0, 700.0], T0 + timedelta(seconds=120))
    result = power.reconcile(T0 + timedelta(seconds=120))
    assert result.not_converged == ["a-2"] and result.status["a-2"] == "not_converged"
    (event,) = audits("power.not_converged")
    assert event.target == "pool:pool-a" and event.details["nodes"] == ["a-2"]
    assert event.after == {"a-2": [{"gpu": 0, "desired_w": 400.0, "reported_w": 700.0, "applied_w": None},
                                   {"gpu": 1, "desired_w": 400.0, "reported_w": 700.0, "applied_w": None}]}
    (delivery,) = Delivery.objects.filter(event="alert")
    (alert,) = delivery.payload["alerts"]
    assert alert["status"] == "firing" and alert["labels"]["node"] == "a-2"
    assert alert["labels"]["alertname"] == "switchyard_controller_power_not_converged"
    assert alert["annotations"]["summary"] == "a-2 (pool pool-a) has not applied its GPU power limits after 120 s"
    assert "GPU 0: wanted 400 W, enforced 700 W, agent applied none" in alert["annotations"]["description"]

    for s in (135, 300):  # still off: not audited or alerted again
        report("a-2", "pool-a", [700.0, 700.0], T0 + timedelta(seconds=s))
        assert power.reconcile(T0 + timedelta(seconds=s)).not_converged == []
    assert len(audits("power.not_converged")) == 1 and Delivery.objects.filter(event="alert").count() == 1

    report("a-2", "pool-a", [400.0, 400.0], T0 + timedelta(seconds=315), applied=capped({"0": 400.0, "1": 400.0}))
    assert power.reconcile(T0 + timedelta(seconds=315)).converged == ["a-2"]
    resolved = Delivery.objects.filter(event="alert").order_by("id").last()
    assert resolved is not None and resolved.payload["alerts"][0]["status"] == "resolved"
    assert resolved.payload["alerts"][0]["fingerprint"] == alert["fingerprint"]


def test_a_node_that_stopped_reporting_is_not_judged(fleet: list[str]) -> None:
    set_policy(doc({"mode": "cap", "cap_w": 400}))
    power.reconcile(T0)
    result = power.reconcile(T0 + timedelta(hours=1))  # the samples are an hour old
    assert result.status["a-1"] == "pending" and result.not_converged == []
    assert audits("power.not_converged") == []
    # Back, still uncapped: the clock starts when it reports again, not when it went quiet.
    report("a-1", "pool-a", [700.0, 700.0], T0 + timedelta(hours=1, seconds=10))
    assert power.reconcile(T0 + timedelta(hours=1, seconds=15)).not_converged == []


def test_uncapping_lifts_the_caps_and_converges_when_the_agent_drops_them(fleet: list[str]) -> None:
    set_policy(doc(**{"pool-b": {"mode": "cap", "cap_w": 300}}))
    power.reconcile(T0)
    report("b-1", "pool-b", [300.0, 300.0], T0, applied=capped({"0": 300.0, "1": 300.0}))
    assert power.reconcile(T0).status["b-1"] == "converged"
    rev = set_policy(doc(), "test: peak season, no caps")
    result = power.reconcile(T0 + timedelta(seconds=15))
    assert desired()["b-1"] == {} and result.status["b-1"] == "pending"
    event = audits("power.cap")[-1]
    assert event.before == {"b-1": {"0": 300.0, "1": 300.0}} and event.after == {"b-1": {}}
    assert f"power policy v{rev.version}" in event.reason and "mode uncapped" in event.reason
    report("b-1", "pool-b", [700.0, 700.0], T0 + timedelta(seconds=20), applied={})  # the agent restored them
    assert power.reconcile(T0 + timedelta(seconds=30)).status["b-1"] == "converged"


def test_off_peak_changes_twice_a_day_with_one_audit_each(fleet: list[str]) -> None:
    set_policy(doc({"mode": "off_peak", "pct": 50, "peak_start_hour": 12, "peak_end_hour": 18}))
    power.reconcile(T0.replace(hour=11))
    assert desired()["a-1"] == {"0": 350.0, "1": 350.0}
    power.reconcile(T0.replace(hour=12))
    power.reconcile(T0.replace(hour=13))
    assert desired()["a-1"] == {}
    reasons = [e.reason for e in audits("power.cap")]
    assert len(reasons) == 4  # two pools, capped at 11:00 and uncapped at 12:00
    assert "(now in the peak: uncapped)" in reasons[-1]


# -- ingest --------------------------------------------------------------------------------------------------

def applied_stored(node: str = "gpu-a-1") -> dict[str, Any]:
    """The applied block ingest kept with the node's latest snapshot, where the power controller reads it."""
    return latest(node)["applied"]


@pytest.mark.usefixtures("clean_samples")
def test_ingest_answers_the_caps_and_keeps_what_the_agent_applied(push: Any) -> None:
    token = make_node()
    redis_client().hset(POWER_DESIRED_KEY, "gpu-a-1", orjson.dumps({"0": 560.0, "1": 560.0}))
    block = {"interval_s": 5, "power_limit_w": {}, "power_asked_w": {}, "power_default_w": {"0": 700.0, "1": 700.0}}
    resp = push(token, {"node": "gpu-a-1", "applied": block, "samples": [full_sample(1)]})
    assert resp.status_code == 200, resp.content
    assert resp.json()["desired"]["power_limit_w"] == {"0": 560.0, "1": 560.0}
    first = applied_stored()
    assert first == {"interval_s": 5, "power_default_w": {"0": 700.0, "1": 700.0}}  # empty maps dropped
    # The controller reads it from there.
    assert power._read_redis()[1]["gpu-a-1"] == first

    assert push(token, {"node": "gpu-a-1", "applied": block, "samples": [full_sample(2)]}).status_code == 200
    assert applied_stored() == first

    block = {**block, "power_limit_w": {"0": 560.0, "1": 560.0}, "power_asked_w": {"0": 560.0, "1": 560.0}}
    push(token, {"node": "gpu-a-1", "applied": block, "samples": [full_sample(3)]})
    assert applied_stored()["power_limit_w"] == {"0": 560.0, "1": 560.0}

    redis_client().hset(POWER_DESIRED_KEY, "gpu-a-1", b"{}")
    assert push(token, {"node": "gpu-a-1", "samples": [full_sample(4)]}).json()["desired"]["power_limit_w"] == {}
    assert applied_stored() == {}  # an agent that reports nothing applied: nothing kept


@pytest.mark.usefixtures("clean_samples")
def test_power_costs_ingest_no_extra_redis_round_trip(push: Any, monkeypatch: pytest.MonkeyPatch) -> None:
    import redis

    trips: list[str] = []
    execute, command = redis.client.Pipeline.execute, redis.Redis.execute_command

    def counted_execute(self: Any, *args: Any, **kwargs: Any) -> Any:
        trips.append("pipeline")
        return execute(self, *args, **kwargs)

    def counted_command(self: Any, *args: Any, **kwargs: Any) -> Any:
        trips.append(str(args[0]))
        return command(self, *args, **kwargs)

    token = make_node()
    redis_client().hset(POWER_DESIRED_KEY, "gpu-a-1", orjson.dumps({"0": 500.0}))
    block = {"interval_s": 5, "power_limit_w": {"0": 500.0}, "power_asked_w": {"0": 500.0},
             "power_default_w": {"0": 700.0, "1": 700.0}}
    assert push(token, {"node": "gpu-a-1", "applied": block, "samples": [full_sample(1)]}).status_code == 200
    monkeypatch.setattr(redis.client.Pipeline, "execute", counted_execute)
    monkeypatch.setattr(redis.Redis, "execute_command", counted_command)
    resp = push(token, {"node": "gpu-a-1", "applied": block, "samples": [full_sample(2)]})
    assert resp.json()["desired"]["power_limit_w"] == {"0": 500.0}
    # The rate limit's pipeline (which reads the caps) and the latest-sample one, which carries the applied block.
    assert trips == ["pipeline", "pipeline"]
    trips.clear()
    push(token, {"node": "gpu-a-1", "applied": {**block, "power_limit_w": {}}, "samples": [full_sample(3)]})
    assert trips == ["pipeline", "pipeline"]  # a change of what the agent applied costs nothing more
    assert "power_limit_w" not in applied_stored()


@pytest.mark.usefixtures("clean_samples")
def test_hostile_applied_and_desired_blocks_store_nothing_and_break_nothing(push: Any) -> None:
    token = make_node()
    huge = {str(i): 300.0 for i in range(50_000)}
    hostile = {
        "interval_s": "fast",
        "power_limit_w": "300",
        "power_asked_w": [1, 2, 3],
        "power_default_w": {"x": 700, "-1": 700, "256": 700, "0": True, "1": "700", "2": 1e9, "3": -5, "٣": 700,
                            "4": None, "5": {"w": 1}},
        "power_extra": huge,
        "nested": {"deep": [[[[[{}]]]]]},
    }
    resp = push(token, {"node": "gpu-a-1", "applied": hostile, "samples": [full_sample(1)]})
    assert resp.status_code == 200, resp.content
    assert applied_stored() == {}
    assert latest("gpu-a-1")["applied"] == {}

    resp = push(token, {"node": "gpu-a-1", "applied": {"power_default_w": huge}, "samples": [full_sample(2)]})
    assert resp.status_code == 200
    stored = applied_stored()
    assert stored and len(stored["power_default_w"]) == 256  # GPUs 0-255, the rest not even read

    redis_client().hset(POWER_DESIRED_KEY, "gpu-a-1", b"not json")
    assert push(token, {"node": "gpu-a-1", "samples": [full_sample(3)]}).json()["desired"]["power_limit_w"] == {}
    redis_client().hset(POWER_DESIRED_KEY, "gpu-a-1", orjson.dumps({"0": "lots", "1": 300, "x": 5}))
    assert push(token, {"node": "gpu-a-1", "samples": [full_sample(4)]}).json()["desired"]["power_limit_w"] == {
        "1": 300.0}

    resp = push(token, {"node": "gpu-a-1", "applied": [1, 2], "samples": [full_sample(5)]})
    assert resp.status_code == 400 and resp.json()["fields"] == {"applied": "must be an object"}


# -- energy per token and the summary ------------------------------------------------------------------------

def push_series(push: Any, token: str, node: str, start: datetime, n: int, energy: Any, tokens_s: float,
                gpus: int = 2) -> None:
    """n samples 10 s apart; energy(k, gpu) is the GPU's counter at sample k."""
    samples = []
    for k in range(n):
        s = full_sample(k + 1, start + timedelta(seconds=10 * k), gpus=gpus)
        s["inference"]["generation_tokens_s"] = tokens_s
        for g in range(gpus):
            s["gpus"][g]["energy_j"] = energy(k, g)
        samples.append(s)
    resp = push(token, {"node": node, "samples": samples})
    assert resp.status_code == 200 and resp.json()["accepted"] == n, resp.content


@pytest.mark.usefixtures("clean_samples")
def test_energy_per_token_from_counter_deltas_through_a_reset(push: Any) -> None:
    now = datetime.now(UTC).replace(second=0, microsecond=0)
    start = now - timedelta(minutes=10)
    # 300 W per GPU (3000 J per 10 s), 1000 tokens/s: 6000 J per 10,000 tokens = 0.6 J/token. GPU 1's counter is
    # reset 305 s in: it reads 3000 J at 310 s, what it counted since.
    a = make_node("a-1", "pool-a")
    push_series(push, a, "a-1", start, 60, lambda k, g: 1000 + 3000.0 * k if g == 0 or k <= 30 else 3000.0 * (k - 30),
                1000.0)
    b = make_node("b-1", "pool-b")  # 400 W per GPU, 500 tokens/s: 8000 J per 5000 tokens
    push_series(push, b, "b-1", start, 60, lambda k, g: 4000.0 * k, 500.0)
    make_node("c-1", "pool-c")  # never reported

    assert power.energy_per_token("pool-a", 900, now) == pytest.approx(0.6, rel=1e-9)
    assert power.energy_per_token("pool-b", 900, now, resolution="raw") == pytest.approx(1.6, rel=1e-9)
    assert power.energy_per_token("pool-c", 900, now) is None
    # The last 100 s alone: 9 intervals after the first sample in the window.
    assert power.energy_per_token("pool-a", 100, now) == pytest.approx(0.6, rel=1e-9)

    rollups.aggregate("1m", start, now)
    assert power.energy_per_token("pool-a", 3600, now) == pytest.approx(0.6, rel=1e-9)  # whole minutes: exact
    assert power.energy_per_token("pool-b", 3600, now, resolution="1m") == pytest.approx(1.6, rel=1e-9)

    with pytest.raises(ValueError, match="window_s must be above 0, got 0"):
        power.energy_per_token("pool-a", 0, now)
    with pytest.raises(ValueError, match="resolution must be 'raw' or '1m', got '1h'"):
        power.energy_per_token("pool-a", 60, now, resolution="1h")


@pytest.mark.usefixtures("clean_samples")
def test_power_summary_per_pool(push: Any) -> None:
    now = datetime.now(UTC).replace(microsecond=0)
    token = make_node("a-1", "pool-a")
    push_series(push, token, "a-1", now - timedelta(seconds=590), 60, lambda k, g: 2500.0 * k, 500.0)
    make_node("b-1", "pool-b")
    set_policy(doc(**{"pool-a": {"mode": "cap", "cap_w": 250}}))
    power.reconcile(now)
    report("a-1", "pool-a", [250.0, 700.0], now, applied=capped({"0": 250.0}), power_w=240.0)
    rows = {r["pool"]: r for r in power.power_summary(now, window_s=900)}  # raw samples (no rollups here)
    a = rows["pool-a"]
    assert a["mode"] == "cap" and a["cap_w"] == 250.0 and a["desired_w"] == {"min": 250.0, "max": 250.0}
    assert (a["converged"], a["gpus"], a["nodes"]) == (1, 2, 1)
    assert a["mean_power_w"] == 240.0
    assert a["energy_per_token_j"] == pytest.approx(1.0, rel=1e-9)  # 2 x 250 W / 500 tokens/s
    b = rows["pool-b"]
    assert b["mode"] == "uncapped" and b["desired_w"] is None and b["gpus"] == 0
    assert b["energy_per_token_j"] is None and b["mean_power_w"] is None
