"""loadgen's workloads: shared-prefix groups and multi-turn sessions, their structure and their seeding, through
the runner against a real local HTTP server and through the command's flags."""

from __future__ import annotations

import asyncio
import random
from io import StringIO

import pytest
from django.core.management import CommandError, call_command

from control.loadgen import curves, runner, workloads
from control.loadgen.mix import parse_mix
from tests.loadgen.test_loadgen import Upstream, upstream  # noqa: F401  (the fixture)


def shared(seed: int, **kw: int) -> list[workloads.Planned]:
    w = workloads.SharedPrefix(**{"groups": 4, "prompts_per_group": 3, "system_tokens": 200, "question_tokens": 20,
                                  "answer_tokens": 8, **kw})
    return workloads.plan(w, [i * 0.1 for i in range(30)], seed, 10.0)


def test_shared_prefix_groups_share_their_system_prompt_and_nothing_else() -> None:
    reqs = shared(7)
    systems: dict[str, set[str]] = {}
    for r in reqs:
        system, user = r.messages
        assert system["role"] == "system" and user["role"] == "user"
        assert len(system["content"]) == 200 * 4 and len(user["content"]) == 20 * 4  # 4 characters a token
        assert r.max_tokens == 8
        systems.setdefault(r.key.split("/")[0], set()).add(system["content"])
    assert len(systems) == 4 and all(len(s) == 1 for s in systems.values())  # one system prompt per group
    assert len({next(iter(s)) for s in systems.values()}) == 4  # and the groups' differ
    assert len({s for v in systems.values() for s in v}) == 4
    # Every (group, prompt) pair is sent once before any repeats: the first 12 are the 12 pairs.
    assert len({r.key for r in reqs[:12]}) == 12
    assert {r.key for r in reqs[:12]} == {r.key for r in reqs[12:24]}


def test_shared_prefix_is_reproducible_by_seed() -> None:
    assert [(r.key, r.messages) for r in shared(7)] == [(r.key, r.messages) for r in shared(7)]
    assert [r.key for r in shared(7)] != [r.key for r in shared(8)]


def test_a_tag_changes_the_texts_not_the_sequence() -> None:
    """bench/prefix.py tags each policy's texts (so no policy finds another's cached) and compares the policies on
    one seeded sequence: tags of any length must leave the arrivals, the group order and the think times alone."""
    def sp(tag: str) -> list[workloads.Planned]:
        w = workloads.SharedPrefix(groups=4, prompts_per_group=3, system_tokens=200, question_tokens=20,
                                   answer_tokens=8, tag=tag)
        return workloads.plan(w, [i * 0.1 for i in range(30)], 7, 10.0)

    def mt(tag: str) -> list[workloads.Planned]:
        w = workloads.MultiTurn(turns=3, context_tokens=100, turn_tokens=10, answer_tokens=5, think_s=2.0, tag=tag)
        return workloads.plan(w, [0.0, 1.0, 2.0], 3, 1000.0)

    for make in (sp, mt):
        a, b = make("<default 1> "), make("<prefix_affinity x2gw 12> ")
        assert [(r.t, r.key) for r in a] == [(r.t, r.key) for r in b]
        assert a[0].messages[0]["content"].startswith("<default 1>")
        assert a[0].messages[0]["content"] != b[0].messages[0]["content"]
        assert [len(m["content"]) for m in a[-1].messages] == [len(m["content"]) for m in b[-1].messages]


def test_multi_turn_sessions_resend_a_growing_conversation() -> None:
    w = workloads.MultiTurn(turns=3, context_tokens=100, turn_tokens=10, answer_tokens=5, think_s=2.0)
    reqs = workloads.plan(w, [0.0, 1.0, 2.0], 3, 1000.0)
    assert len(reqs) == 9
    assert [r.t for r in reqs] == sorted(r.t for r in reqs)  # in send order
    by_session: dict[str, list[workloads.Planned]] = {}
    for r in reqs:
        by_session.setdefault(r.key.split("/")[0], []).append(r)
    for turns in by_session.values():
        assert [r.key.split("/")[1] for r in turns] == ["t0", "t1", "t2"]
        for i, r in enumerate(turns):
            assert len(r.messages) == 2 + 2 * i  # context, then user/assistant pairs, the newest user last
            assert r.messages[-1]["role"] == "user"
            if i:
                assert r.messages[: len(turns[i - 1].messages)] == turns[i - 1].messages  # it grows
                assert r.t > turns[i - 1].t  # a think time after the previous turn
    assert workloads.plan(w, [0.0, 1.0, 2.0], 3, 1000.0) == reqs
    # Turns planned past the end of the run are not sent.
    short = workloads.plan(w, [0.0, 1.0, 2.0], 3, 2.5)
    assert 3 <= len(short) < 9 and all(r.t < 2.5 for r in short)


def test_the_runner_sends_the_workload_and_the_request_rate_stays_the_curves(upstream: tuple[str, Upstream]) -> None:  # noqa: F811
    url, app = upstream
    spec = runner.LoadSpec(
        url=url, model="m", curve=curves.build(curves.CurveSpec(rate=80)), duration_s=1.0,
        prompt_tokens=parse_mix("8", int, "p"), max_tokens=parse_mix("4", int, "m"),
        classes=parse_mix("realtime", str, "c"), stream_fraction=0.0, seed=11,
        workload=workloads.MultiTurn(turns=2, context_tokens=50, turn_tokens=5, answer_tokens=3, think_s=0.1))
    outcomes = asyncio.run(runner.run(spec))
    assert all(o.status == 200 for o in outcomes)
    assert 40 <= len(app.bodies) <= 130  # ~80 req/s for 1 s: session starts at 40/s, two turns each
    assert all(b["max_tokens"] == 3 and b["messages"][0]["role"] == "system" for b in app.bodies)
    assert any(len(b["messages"]) == 4 for b in app.bodies)  # second turns carry the first


def test_arrivals_are_the_curves_rate() -> None:
    times = runner.arrivals(curves.build(curves.CurveSpec(rate=50)), 20.0, random.Random(1))
    assert 850 <= len(times) <= 1150 and times == sorted(times)


@pytest.mark.parametrize("args, message", [
    (["--workload", "shared-prefix", "--groups", "0"], "--groups 0 must be between 1 and 10000"),
    (["--workload", "shared-prefix", "--system-tokens", "-5"], "--system-tokens -5 must be between 1 and 100000"),
    (["--workload", "shared-prefix", "--answer-tokens", "0"], "--answer-tokens 0 must be between 1 and 32768"),
    (["--workload", "multi-turn", "--turns", "0"], "--turns 0 must be between 1 and 1000"),
    (["--workload", "multi-turn", "--think-s", "-1"], "--think-s -1 must be between 0 and 3600"),
])
def test_command_refuses_bad_workload_flags(args: list[str], message: str) -> None:
    with pytest.raises(CommandError, match=message):
        call_command("loadgen", *args, "--duration", "1", "--no-progress")


def test_command_runs_a_shared_prefix_workload(upstream: tuple[str, Upstream]) -> None:  # noqa: F811
    url, app = upstream
    out = StringIO()
    call_command("loadgen", "--url", url, "--rate", "30", "--duration", "0.5", "--priority", "realtime",
                 "--workload", "shared-prefix", "--groups", "2", "--prompts-per-group", "2", "--system-tokens", "64",
                 "--seed", "1", "--no-progress", stdout=out)
    assert "workload shared-prefix" in out.getvalue()
    assert app.bodies and len({b["messages"][0]["content"] for b in app.bodies}) <= 2
