"""Policy schemas: the shipped defaults validate as they are, and the scheduler default is the classic formula."""

from __future__ import annotations

import random

import pytest

from control.policy.defaults import DEFAULTS, default_document
from control.policy.schemas import KINDS, DocumentError, score, validate
from core import diffing
from core.diffing import error_path


@pytest.mark.parametrize("kind", KINDS)
def test_defaults_are_valid_and_already_normalised(kind: str) -> None:
    assert validate(kind, default_document(kind)) == DEFAULTS[kind]


def test_the_scheduler_default_is_the_classic_weighted_score_plus_the_expected_wait_and_affinity() -> None:
    doc = DEFAULTS["scheduler"]
    weights = {s["metric"]: (s["weight"], s["invert"]) for s in doc["scorers"] if s["weight"]}
    assert weights == {"gpu_free": (0.6, False), "cpu_load": (0.3, True), "latency": (-0.1, False),
                       "expected_wait": (5.0, True), "prefix_affinity": (2.0, False), "expected_ttft": (3.0, True)}
    classic_doc = {**doc, "scorers": [s for s in doc["scorers"]
                                      if s["metric"] not in ("expected_wait", "prefix_affinity", "expected_ttft")]}
    rng = random.Random(7)
    for _ in range(200):
        v = {m: rng.random() for m in ("gpu_free", "cpu_load", "latency", "queue_depth", "kv_cache", "expected_wait",
                                       "prefix_affinity", "expected_ttft")}
        classic = 0.6 * v["gpu_free"] + 0.3 * (1 - v["cpu_load"]) - 0.1 * v["latency"]
        # The classic formula reproduced exactly from its weights; the default adds the expected wait and affinity
        # (and, for a streamed request, the expected time to first token).
        assert score(classic_doc, v) == pytest.approx(classic, abs=1e-12)
        assert score(doc, v) == pytest.approx(classic + 5.0 * (1 - v["expected_wait"]) + 2.0 * v["prefix_affinity"]
                                              + 3.0 * (1 - v["expected_ttft"]), abs=1e-12)


def test_scaling_default_rules() -> None:
    rules = {r["metric"]: r for r in DEFAULTS["scaling"]["default"]["rules"]}
    assert (rules["gpu_util_pct"]["threshold"], rules["gpu_util_pct"]["step"], rules["gpu_util_pct"]["cooldown_s"]) \
        == (85.0, 2, 300)
    assert (rules["queue_length"]["threshold"], rules["queue_length"]["step"], rules["queue_length"]["cooldown_s"]) \
        == (50.0, 1, 600)
    default = DEFAULTS["scaling"]["default"]
    assert default["scale_down"]["stabilization_window_s"] == 300
    assert default["predictive"] == {"enabled": False, "horizon_min": 10, "metric": "request_rate", "per_node": None,
                                     "boot_time_s": 180, "buffer_min": 2}
    assert [c["name"] for c in DEFAULTS["priorities"]["classes"]] == ["realtime", "standard", "batch"]
    assert [c["sheddable"] for c in DEFAULTS["priorities"]["classes"]] == [False, False, True]
    assert DEFAULTS["power"]["default"]["mode"] == "uncapped" and len(DEFAULTS["alerts"]["rules"]) == 7


def test_errors_carry_every_bad_path() -> None:
    doc = default_document("scaling")
    doc["default"]["rules"][0]["threshold"] = "high"
    doc["default"]["rules"][1]["step"] = 0
    with pytest.raises(DocumentError) as exc:
        validate("scaling", doc)
    assert set(exc.value.fields) == {"default.rules[0].threshold", "default.rules[1].step"}
    with pytest.raises(DocumentError) as exc:
        validate("scheduler", {**default_document("scheduler"), "scorers": [{"metric": "gpu_free",
                                                                            "weight": float("nan")}]})
    assert "scorers[0].weight" in exc.value.fields


def test_error_paths() -> None:
    assert error_path(()) == "$"
    assert error_path(("default", "rules", 0, "threshold")) == "default.rules[0].threshold"
    assert error_path(("pools", "pool-a", "cap_w")) == "pools['pool-a'].cap_w"


def test_changes_between_documents() -> None:
    a = {"x": 1, "l": [1, 2], "b": True}
    b = {"x": 1.0, "l": [1], "b": 1, "n": None}
    assert diffing.changes(a, b) == [
        {"path": "l[1]", "op": "removed", "before": 2, "after": None},
        {"path": "b", "op": "changed", "before": True, "after": 1},
        {"path": "n", "op": "added", "before": None, "after": None},
    ]
    rows = diffing.side_by_side({"a": 1}, {"a": 2})
    assert [r.kind for r in rows] == ["same", "changed", "same"]
