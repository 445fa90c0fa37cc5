"""Smoke test of bench/autoscale.py's simulation (the figures themselves come from running the bench)."""

from __future__ import annotations

import math

import numpy as np
import pytest

from bench.autoscale import Pool, main, make_trace, policy_for, simulate


def test_trace_has_a_daily_peak_near_14h() -> None:
    demand = make_trace(2, seed=1, peak=250.0)
    assert demand.shape == (2880,) and demand.min() >= 0
    for day in range(2):
        peak_minute = int(np.argmax(demand[day * 1440:(day + 1) * 1440]))
        assert 12 * 60 <= peak_minute <= 16 * 60
        assert demand[day * 1440 + 3 * 60] < demand[day * 1440 + peak_minute] / 3  # nights are quiet


def test_new_nodes_serve_after_the_boot_time_and_booting_ones_go_first() -> None:
    pool = Pool(2)
    pool.resize(4, minute=10, boot_min=5)
    assert (pool.size, pool.ready(15), pool.ready(16)) == (4, 2, 4)
    pool.resize(3, minute=11, boot_min=5)
    assert (pool.size, pool.ready(11), pool.ready(16)) == (3, 2, 3)


def test_static_and_reactive_replays_differ_as_expected() -> None:
    demand = make_trace(1, seed=2, peak=250.0)
    common = dict(capacity=10.0, boot_min=8, start=0, progress=False)
    peak = simulate("static-peak", demand, policy=None, static=math.ceil(demand.max() / 10), **common)
    mean = simulate("static-mean", demand, policy=None, static=math.ceil(demand.mean() / 10), **common)
    reactive = simulate("reactive", demand, policy=policy_for(8, False, None, 60.0), **common)
    assert peak.violation_min == 0 and mean.violation_min > 60
    assert reactive.actions > 0 and reactive.node_minutes < peak.node_minutes
    assert reactive.violation_min < mean.violation_min


def test_bad_arguments_are_refused(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit):
        main(["--days", "2", "--warmup-days", "2"])
    assert "--days 2 leaves no day to evaluate after --warmup-days 2" in capsys.readouterr().err
