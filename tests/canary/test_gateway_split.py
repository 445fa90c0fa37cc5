"""The split in real gateways: two gateways put the same key on the same arm, the canary arm routes with the
candidate policy, the request log records the arm, and the routing aggregator keeps minute rows per arm."""

from __future__ import annotations

import copy
from collections import Counter
from typing import Any

import httpx

from control.canary.models import ArmMinute, Canary
from control.canary.split import arm, request_key
from control.policy.defaults import default_document
from control.routing import aggregate
from tests.canary.helpers import CANARY_URL, candidate, start
from tests.scheduler.conftest import MODEL, Fleet
from tests.scheduler.test_gateway import reqlog

CHAT = {"model": MODEL, "messages": [{"role": "user", "content": "hello"}]}


def only_cool_nodes() -> dict[str, Any]:
    """A candidate that filters out nodes above 50 % GPU: what it routes is visibly its own."""
    doc = copy.deepcopy(default_document("scheduler"))
    doc["filters"]["max_gpu_util_pct"] = 50.0
    doc["cache"]["enabled"] = False
    return doc


def test_two_gateways_split_alike_and_the_canary_arm_uses_the_candidate(
        fleet: Fleet, upstreams: Any, gateway: Any, user_token: str, api: Any, redis_db: Any) -> None:
    cool, hot = upstreams(2, delay=0.0)
    fleet.add(cool.name, cool.url, gpu=20.0)
    fleet.add(hot.name, hot.url, gpu=90.0)
    op = api("operator")
    r = start(op, candidate(op, only_cool_nodes()), steps=[{"weight": 50, "pause_s": 3600}])
    assert r.status_code == 201, r.content
    canary_id = r.json()["id"]
    gws = [gateway(), gateway()]
    for gw in gws:
        gw.wait(lambda gw=gw: gw.app.canary is not None and len(gw.eligible()) == 2, what="canary core loaded")

    arms: list[list[str]] = [[], []]
    with httpx.Client(timeout=30) as client:
        for i in range(80):
            for g, gw in enumerate(gws):
                resp = client.post(f"{gw.url}/v1/chat/completions", json=CHAT,
                                   headers={"Authorization": f"Bearer {user_token}", "X-Session-Id": f"conv-{i}",
                                            "Cache-Control": "no-cache"})
                assert resp.status_code == 200, resp.text
                arms[g].append(resp.headers["X-Switchyard-Arm"])
                if resp.headers["X-Switchyard-Arm"] == "canary":
                    assert resp.headers["X-Switchyard-Node"] == cool.name  # the candidate's filter at work
    assert arms[0] == arms[1]  # both gateways, the same arm for each conversation
    assert arms[0] == [arm(request_key(f"conv-{i}", "", ""), 50) for i in range(80)]
    assert 20 <= arms[0].count("canary") <= 60

    gws[0].wait(lambda: len(reqlog(redis_db)) >= 160, what="160 request-log entries")
    entries = reqlog(redis_db)
    assert {e["canary"] for e in entries} == {str(canary_id)}
    logged = Counter(e["arm"] for e in entries)
    assert logged["canary"] == 2 * arms[0].count("canary") and logged["stable"] == 2 * arms[0].count("stable")
    assert {e["node"] for e in entries if e["arm"] == "canary"} == {cool.name}

    aggregate.run()
    rows = Counter()
    for m in ArmMinute.objects.filter(canary_id=canary_id):
        rows[m.arm] += m.requests
        assert m.status_2xx == m.requests and sum(m.latency_buckets) == m.requests
    assert rows == logged
    series = op.get(CANARY_URL).json()["series"]  # what the canary page charts
    assert {arm: sum(p["requests"] for p in pts) for arm, pts in series.items()} == dict(logged)
    assert all(p["p95_latency_ms"] > 0 and p["error_rate"] == 0 for pts in series.values() for p in pts)

    # Aborted: every request goes back to the stable policy and carries no arm.
    assert op.post(f"{CANARY_URL}abort/", {"reason": "done"}, format="json").status_code == 200
    for gw in gws:
        gw.refresh_now()
        gw.wait(lambda gw=gw: gw.app.canary is None, what="canary dropped")
    resp = httpx.post(f"{gws[0].url}/v1/chat/completions", json=CHAT,
                      headers={"Authorization": f"Bearer {user_token}", "X-Session-Id": "conv-0"}, timeout=30)
    assert resp.status_code == 200 and "X-Switchyard-Arm" not in resp.headers
    assert Canary.objects.get().state == "aborted"


def test_the_candidate_core_counts_the_stable_arms_sends(fleet: Fleet, upstreams: Any, gateway: Any,
                                                         api: Any) -> None:
    """Both cores see every request in flight, whichever arm sent it (no herding on a node one arm thinks idle)."""
    (node,) = upstreams(1, delay=0.0)
    fleet.add(node.name, node.url)
    op = api("operator")
    assert start(op, candidate(op), steps=[{"weight": 10, "pause_s": 3600}]).status_code == 201
    gw = gateway()
    gw.wait(lambda: gw.app.canary is not None and gw.app.canary.sched.nodes.get(node.name) is not None,
            what="canary core loaded")
    stable, cand = gw.app.admission, gw.app.canary.admission
    n_stable, n_cand = stable.sched.nodes[node.name], cand.sched.nodes[node.name]

    async def go() -> None:
        await stable.acquire(MODEL, "standard", frozenset(), 10_001)
        await cand.acquire(MODEL, "standard", frozenset(), 10_002)

    fut = __import__("asyncio").run_coroutine_threadsafe(go(), gw.loop)
    fut.result(10)
    assert n_stable.in_flight == 2 and n_cand.in_flight == 2
    gw.loop.call_soon_threadsafe(stable.finish, n_stable, 10_001, None, True)
    gw.loop.call_soon_threadsafe(cand.finish, n_cand, 10_002, None, True)
    gw.wait(lambda: n_stable.in_flight == 0 and n_cand.in_flight == 0, what="both finished in both cores")


def without_affinity() -> dict[str, Any]:
    doc = copy.deepcopy(default_document("scheduler"))
    doc["scorers"] = [s for s in doc["scorers"] if s["metric"] != "prefix_affinity"]
    doc["cache"]["enabled"] = False
    return doc


def test_a_candidate_with_prefix_affinity_gets_prefix_keys_when_the_stable_policy_has_none(
        fleet: Fleet, upstreams: Any, gateway: Any, user_token: str, api: Any) -> None:
    """The gateway used to cut a prompt's block keys only when the *stable* policy routed by prefix: a candidate
    with prefix_affinity (today's default) on a stable policy without it learned nothing and routed blind."""
    (node,) = upstreams(1, delay=0.0)
    fleet.add(node.name, node.url)
    op = api("operator")
    active = op.get("/api/v1/policies/scheduler/").json()
    r = op.post("/api/v1/policies/scheduler/revisions/", {"document": without_affinity(), "reason": "no affinity",
                                                         "parent": active["id"], "activate": True}, format="json")
    assert r.status_code == 201, r.content
    with_affinity = copy.deepcopy(default_document("scheduler"))
    with_affinity["cache"]["enabled"] = False
    assert start(op, candidate(op, with_affinity), steps=[{"weight": 100, "pause_s": 3600}]).status_code == 201
    gw = gateway()
    gw.wait(lambda: gw.app.canary is not None and len(gw.eligible()) == 1, what="canary core loaded")
    assert not gw.app.sched.config.uses_prefix and gw.app.canary.sched.config.uses_prefix
    prompt = {"model": MODEL, "messages": [{"role": "user", "content": "the same long system prompt " * 40}]}
    resp = httpx.post(f"{gw.url}/v1/chat/completions", json=prompt, timeout=30,
                      headers={"Authorization": f"Bearer {user_token}", "Cache-Control": "no-cache"})
    assert resp.status_code == 200 and resp.headers["X-Switchyard-Arm"] == "canary"
    gw.wait(lambda: gw.app.canary.sched.prefix.size(node.name) > 0, what="the candidate's prefix index learns")


def test_prefix_keys_follow_whichever_core_routes_by_prefix() -> None:
    from control.scheduler.canary_arm import prefix_config
    from control.scheduler.config import Config

    plain, keyed = Config.from_document(without_affinity()), Config.from_document(default_document("scheduler"))
    assert prefix_config(plain, None, "") is None
    assert prefix_config(plain, keyed, "canary") is keyed
    assert prefix_config(plain, keyed, "stable") is keyed  # the candidate counts the stable arm's sends too
    assert prefix_config(keyed, plain, "canary") is keyed
    assert prefix_config(plain, plain, "canary") is None


def test_the_candidates_waiting_requests_are_served_after_the_canary_ends(
        fleet: Fleet, upstreams: Any, gateway: Any, user_token: str, api: Any) -> None:
    """A request the candidate queued (no node passes its filter) was left in a dropped admission's queue when the
    canary ended, never offered capacity again, and answered 503 at its queue timeout. The ended canary's arm now
    stays linked while requests wait in it, so capacity freeing serves them."""
    import threading

    (hot,) = upstreams(1, delay=0.0)
    fleet.add(hot.name, hot.url, gpu=90.0)  # above the candidate's 50 % filter: it queues every request
    op = api("operator")
    assert start(op, candidate(op, only_cool_nodes()), steps=[{"weight": 100, "pause_s": 3600}]).status_code == 201
    gw = gateway()
    gw.wait(lambda: gw.app.canary is not None and len(gw.eligible()) == 1, what="canary core loaded")
    answer: dict[str, Any] = {}

    def ask() -> None:
        r = httpx.post(f"{gw.url}/v1/chat/completions", json=CHAT, timeout=120,
                       headers={"Authorization": f"Bearer {user_token}", "Cache-Control": "no-cache"})
        answer.update(status=r.status_code, node=r.headers.get("X-Switchyard-Node"), body=r.text)

    t = threading.Thread(target=ask)
    t.start()
    arm = gw.app.canary
    gw.wait(lambda: len(arm.admission.waitq) == 1, what="the candidate's request waiting")
    assert op.post(f"{CANARY_URL}abort/", {"reason": "done"}, format="json").status_code == 200
    gw.refresh_now()
    gw.wait(lambda: gw.app.canary is None, what="canary dropped")
    fleet.sample(hot.name, gpu=20.0)  # capacity the candidate's filter accepts
    gw.refresh_now()
    t.join(120)
    assert answer.get("status") == 200, answer
    assert answer["node"] == hot.name
    gw.wait(lambda: gw.app.retiring is None and gw.app.admission.twin is None, what="the ended arm unlinked")
