"""The canary split: a function of the request key and the weight only."""

from __future__ import annotations

import subprocess
import sys

import pytest

from control.canary.split import CANARY, STABLE, arm, request_key


def test_the_same_key_always_lands_on_the_same_arm() -> None:
    keys = [request_key(f"conv-{i}", "", "") for i in range(2000)]
    first = [arm(k, 25) for k in keys]
    assert first == [arm(k, 25) for k in keys]
    assert {CANARY, STABLE} == set(first)


@pytest.mark.parametrize("weight", [5, 25, 50, 90])
def test_shares_are_within_2_percent_over_10000_keys(weight: float) -> None:
    n = 10_000
    on_canary = sum(arm(request_key("", f"req-{i}", ""), weight) == CANARY for i in range(n))
    assert abs(on_canary / n - weight / 100) <= 0.02, on_canary


def test_raising_the_weight_only_moves_keys_onto_the_canary() -> None:
    keys = [request_key(f"s{i}", "", "") for i in range(5000)]
    at5 = {k for k in keys if arm(k, 5) == CANARY}
    at25 = {k for k in keys if arm(k, 25) == CANARY}
    assert at5 and at5 <= at25 and len(at25) > len(at5)
    assert all(arm(k, 0) == STABLE for k in keys) and all(arm(k, 100) == CANARY for k in keys)


def test_a_session_outranks_the_request_id() -> None:
    # A conversation stays on one arm whatever request ids its turns carry.
    arms = {arm(request_key("conversation-7", f"turn-{i}", f"gw:{i}"), 50) for i in range(200)}
    assert len(arms) == 1


def test_another_process_computes_the_same_split() -> None:
    """What two gateways (two processes, each with its own hash seed) do with the same keys."""
    code = ("from control.canary.split import arm, request_key;"
            "print(''.join('c' if arm(request_key('', f'k{i}', ''), 30) == 'canary' else 's' for i in range(500)))")
    here = "".join("c" if arm(request_key("", f"k{i}", ""), 30) == CANARY else "s" for i in range(500))
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True,
                         env={"PYTHONHASHSEED": "12345", "PATH": ""}, cwd=".").stdout.strip()
    assert out == here
