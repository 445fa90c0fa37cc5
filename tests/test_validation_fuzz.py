"""Hostile payloads: whatever JSON arrives, validation answers with paths or a batch, never an exception."""

from __future__ import annotations

import json
from datetime import UTC, datetime, timedelta, timezone
from typing import Any

from hypothesis import given, settings
from hypothesis import strategies as st

from agents.catalogue import GPU_METRICS
from dashboard.fleet.validation import MAX_ERRORS, validate
from tests.conftest import full_sample

NOW = datetime(2026, 11, 28, 14, 0, tzinfo=UTC)
OLDEST = NOW - timedelta(days=7)

json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=True, allow_infinity=True) | st.text(max_size=20),
    lambda children: st.lists(children, max_size=4) | st.dictionaries(st.text(max_size=10), children, max_size=4),
    max_leaves=20,
)


@settings(max_examples=300, deadline=None)
@given(doc=json_values)
def test_any_json_document_is_answered(doc: Any) -> None:
    batch, errors = validate(doc, NOW, OLDEST, 100)
    assert (batch is None) == bool(errors.fields)
    assert len(errors.fields) <= MAX_ERRORS
    assert all(isinstance(k, str) and isinstance(v, str) for k, v in errors.fields.items())


@settings(max_examples=300, deadline=None)
@given(metric=st.sampled_from([m.name for m in GPU_METRICS]), value=json_values)
def test_any_value_in_a_metric_is_either_accepted_in_range_or_named(metric: str, value: Any) -> None:
    sample = full_sample(1, NOW - timedelta(seconds=5))
    sample["gpus"][0][metric] = value
    batch, errors = validate({"node": "n", "samples": [sample]}, NOW, OLDEST, 100)
    path = f"samples[0].gpus[0].{metric}"
    if batch is None:
        assert path in errors.fields, errors.fields
        assert len(errors.fields) == 1
    else:
        stored = dict(zip([m.name for m in GPU_METRICS], batch.samples[0].gpus[0].values, strict=True))[metric]
        spec = next(m for m in GPU_METRICS if m.name == metric)
        assert stored is None or spec.lo <= stored <= spec.hi
        assert value is None or stored is not None  # a given value is never turned into null silently
        assert not isinstance(value, bool)
    json.dumps(errors.fields)  # the answer is always serialisable


offsets = st.builds(timezone, st.timedeltas(min_value=timedelta(hours=-14), max_value=timedelta(hours=14)))


@settings(max_examples=300, deadline=None)
@given(ts=st.datetimes(timezones=offsets | st.none()).map(lambda d: d.isoformat()))
def test_any_timestamp_string_is_answered(ts: str) -> None:
    sample = full_sample(1, NOW)
    sample["ts"] = ts
    batch, errors = validate({"node": "n", "samples": [sample]}, NOW, OLDEST, 100)
    assert batch is not None or set(errors.fields) == {"samples[0].ts"}


@settings(max_examples=100, deadline=None)
@given(n=st.integers(min_value=1, max_value=12), junk=json_values)
def test_too_many_samples_is_413_whatever_they_hold(n: int, junk: Any) -> None:
    batch, errors = validate({"node": "n", "samples": [junk] * n}, NOW, OLDEST, 5)
    if n > 5:
        assert batch is None and errors.status == 413 and list(errors.fields) == ["samples"]
        assert "send smaller batches" in errors.summary()
    else:
        assert errors.status == 400
