"""The pure state machine with a controllable clock: pending -> firing after `for`, resolve, keep_firing_for,
flapping."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

from hypothesis import given
from hypothesis import strategies as st

from control.alerts.fingerprint import fingerprint
from control.alerts.machine import FIRING, INACTIVE, PENDING, RESOLVED, Track, compare, step

T0 = datetime(2026, 11, 28, 14, 0, tzinfo=UTC)


def at(s: float) -> datetime:
    return T0 + timedelta(seconds=s)


def run(conditions: list[bool], for_s: float, keep: float = 0, every: float = 10) -> list[str]:
    track, states = Track(), []
    for i, c in enumerate(conditions):
        track = step(track, c, at(i * every), for_s, keep)
        states.append(track.state)
    return states


def test_pending_until_for_then_firing() -> None:
    # for 30 s, evaluated every 10 s: true at 0, 10, 20 -> pending; at 30 the condition has held 30 s -> firing.
    assert run([True] * 5, for_s=30) == [PENDING, PENDING, PENDING, FIRING, FIRING]


def test_for_zero_fires_at_once() -> None:
    assert run([True], for_s=0) == [FIRING]


def test_a_pending_condition_that_clears_goes_back_to_inactive_and_starts_over() -> None:
    assert run([True, True, False, True, True, True, True], for_s=30) == [
        PENDING, PENDING, INACTIVE, PENDING, PENDING, PENDING, FIRING]


def test_resolves_when_the_condition_clears() -> None:
    track = step(Track(), True, at(0), 0)
    track = step(track, False, at(10), 0)
    assert track.state == RESOLVED and track.resolved_at == at(10) and track.fired_at == at(0)


def test_keep_firing_for_rides_out_short_gaps_and_resolves_after_it() -> None:
    # keep 30 s: false at 10, 20 (gap of 20 s) still firing; true at 30; false from 40: resolved at 60 (30 s after 30)
    states = run([True, False, False, True, False, False, False, False], for_s=0, keep=30)
    assert states == [FIRING, FIRING, FIRING, FIRING, FIRING, FIRING, RESOLVED, RESOLVED]


def test_flapping_without_keep_firing_for_makes_episodes_that_each_wait_for_for() -> None:
    # A metric flapping every evaluation never satisfies for=20 s: no alert at all, however long it flaps.
    assert FIRING not in run([True, False] * 20, for_s=20)


def test_flapping_with_keep_firing_for_is_one_long_alert() -> None:
    states = run([True, False] * 10, for_s=0, keep=15)
    assert states == [FIRING] * 20


def test_a_new_episode_after_resolved() -> None:
    track = step(step(Track(), True, at(0), 0), False, at(10), 0)
    again = step(track, True, at(20), 0)
    assert again.state == FIRING and again.active_at == at(20) and again.resolved_at is None


@given(st.lists(st.booleans(), min_size=1, max_size=60), st.integers(0, 120), st.integers(0, 120))
def test_invariants(conditions: list[bool], for_s: int, keep: int) -> None:
    track = Track()
    for i, c in enumerate(conditions):
        new = step(track, c, at(i * 10), for_s, keep)
        if new.state == FIRING and track.state != FIRING:
            assert c and new.active_at is not None and (new.fired_at - new.active_at) >= timedelta(seconds=for_s)
        if new.state == RESOLVED and track.state == FIRING:
            assert not c and new.resolved_at - (track.last_true_at or track.fired_at) >= timedelta(seconds=keep)
        assert not (track.state == INACTIVE and new.state == RESOLVED)
        track = new


def test_compare() -> None:
    assert compare(86, ">", 85) and not compare(85, ">", 85) and compare(85, ">=", 85)
    assert compare(1, "<", 2) and compare(2, "<=", 2) and compare(3, "==", 3) and compare(3, "!=", 4)


def test_fingerprint_is_stable_and_ignores_order_severity_and_extra_labels() -> None:
    a = fingerprint("gpu-hot", {"pool": "a", "node": "n1", "gpu": "0"})
    # Pinned: alert rows are matched by it across restarts and releases.
    assert a == "bdc45d2e3ecbe9a3"
    assert a == fingerprint("gpu-hot", {"gpu": "0", "node": "n1", "pool": "a", "severity": "critical"})
    assert a != fingerprint("gpu-hot", {"pool": "a", "node": "n1", "gpu": "1"})
    assert a != fingerprint("gpu-warm", {"pool": "a", "node": "n1", "gpu": "0"})


def test_fingerprint_does_not_depend_on_the_process_hash_seed() -> None:
    import subprocess
    import sys

    code = "from control.alerts.fingerprint import fingerprint as f; print(f('r', {'node': 'n', 'pool': 'p'}))"
    outs = {subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True,
                           env={"PYTHONHASHSEED": seed, "PATH": ""}).stdout for seed in ("1", "2")}
    assert len(outs) == 1 and outs.pop().strip() == fingerprint("r", {"pool": "p", "node": "n"})
