"""Validation keeps its exact words: every hostile value in every catalogue metric, and malformed documents, give
the field paths, messages, status and summary recorded in tests/data/validation_golden.json (written by the
validator before its fast path over precompiled specs went in, and checked then against the old code case for
case). A change of wording must change that file on purpose:
`python -m tests.test_validation_golden` rewrites it from the current validator."""

from __future__ import annotations

import json
import sys
from datetime import timedelta
from pathlib import Path
from typing import Any

import pytest

from agents.catalogue import GPU_METRICS, HOST_METRICS, INFERENCE_METRICS
from dashboard.fleet.validation import validate
from tests.conftest import full_sample
from tests.test_validation_fuzz import NOW, OLDEST

GOLDEN = Path(__file__).parent / "data" / "validation_golden.json"
VALUES: dict[str, Any] = {
    "null": None, "true": True, "string": "12", "list": [1], "object": {"v": 1}, "nan": float("nan"),
    "inf": float("inf"), "-inf": float("-inf"), "1.5": 1.5, "-0.0": -0.0, "1e300": 1e300, "-1e300": -1e300,
    "2**70": 2**70, "-2**70": -(2**70), "-1": -1, "101": 101, "400": 400, "3.0": 3.0,
}
STRUCTURAL: dict[str, Any] = {
    "not-object": [1, 2, 3], "no-samples": {"node": "n", "samples": []}, "samples-string": {"node": "n", "samples": "x"},
    "sample-string": {"node": "n", "samples": ["<script>"]}, "no-node": {"samples": [None]},
    "node-number": {"node": 5, "samples": [{}]}, "long-node": {"node": "n" * 64, "samples": [{}]},
    "models-string": {"node": "n", "models": "m", "samples": [{}]}, "endpoint": {"node": "n", "endpoint": "ftp://x",
                                                                                 "samples": [{}]},
    "gpus-not-list": {"node": "n", "samples": [{"gpus": 3}]}, "gpu-not-object": {"node": "n", "samples": [{"gpus": [1]}]},
    "seq-float": {"node": "n", "samples": [{"seq": 1.0}]}, "many-errors": {"node": "n", "samples": [{}] * 30},
}


def cases() -> dict[str, Any]:
    out = dict(STRUCTURAL)
    for scope, metrics in (("gpus", GPU_METRICS), ("host", HOST_METRICS), ("inference", INFERENCE_METRICS)):
        for m in metrics:
            for vid, value in VALUES.items():
                sample = full_sample(1, NOW - timedelta(seconds=5))
                if scope == "gpus":
                    sample["gpus"][1][m.name] = value
                else:
                    sample[scope] = {**(sample.get(scope) or {}), m.name: value}
                out[f"{scope}.{m.name}={vid}"] = {"node": "n", "samples": [full_sample(0, NOW), sample]}
    return out


def outcome(doc: Any) -> dict[str, Any]:
    batch, errors = validate(doc, NOW, OLDEST, 100)
    return {"fields": list(errors.fields.items()), "status": errors.status,
            "summary": errors.summary() if errors.fields else None, "stored": batch is not None}


def test_every_case_answers_as_recorded() -> None:
    golden = json.loads(GOLDEN.read_text())
    now = {k: outcome(doc) for k, doc in cases().items()}
    assert set(now) == set(golden)
    for key, expected in golden.items():
        expected["fields"] = [tuple(f) for f in expected["fields"]]
        got = now[key]
        got["fields"] = [tuple(f) for f in got["fields"]]
        assert got == expected, key


@pytest.mark.parametrize("vid", ["1.5", "3.0", "-0.0", "101"])
def test_accepted_values_keep_their_types(vid: str) -> None:
    """An integer metric stores an int, a real metric a float, whatever JSON number carried them."""
    for m in GPU_METRICS:
        doc = cases()[f"gpus.{m.name}={vid}"]
        batch, _ = validate(doc, NOW, OLDEST, 100)
        if batch is None:
            continue
        v = batch.samples[1].gpus[1].values[[g.name for g in GPU_METRICS].index(m.name)]
        assert type(v) is (int if m.integer else float), (m.name, vid, v)


if __name__ == "__main__":  # rewrite the golden file from the current validator
    import django

    django.setup()
    GOLDEN.write_text(json.dumps({k: outcome(doc) for k, doc in cases().items()}, indent=0, sort_keys=True) + "\n")
    print(f"wrote {GOLDEN}", file=sys.stderr)
