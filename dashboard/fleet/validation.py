"""Validation of agent ingest payloads (DESIGN.md, "Agent → ingest").

Hand-written rather than a schema library because the ingest path runs it for every GPU of every push and the
error messages are a contract: each bad field is reported with its exact path, e.g.
`samples[0].gpus[1].gpu_util_pct: 140 is above 100`. Validation collects every error of a request (up to a cap)
and the caller stores nothing unless there are none.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from operator import le
from typing import Any

from agents.catalogue import GPU_METRICS, HOST_METRICS, INFERENCE_METRICS, Metric
from dashboard.fleet import serving as serving_block

MAX_ERRORS = 50
MAX_GPUS = 64
MAX_MODELS = 64
MAX_SEQ = 2**63 - 1
TOP_LEVEL_KEYS = frozenset({"node", "agent", "endpoint", "models", "samples", "applied", "serving"})
SAMPLE_KEYS = frozenset({"ts", "seq", "host", "gpus", "inference"})
GPU_ID_KEYS = frozenset({"index", "uuid", "name"})


class TooManyErrors(Exception):
    pass


@dataclass
class Errors:
    fields: dict[str, str] = field(default_factory=dict)
    # 413 when the request is refused for its size alone (too many samples): the agent then halves its batch,
    # where a 400 makes it dead-letter the sample named by index.
    status: int = 400

    def add(self, path: str, message: str) -> None:
        self.fields.setdefault(path, message)
        if len(self.fields) >= MAX_ERRORS:
            raise TooManyErrors

    def summary(self) -> str:
        if self.status == 413:
            return f"too many samples: {self.fields['samples']}; nothing was stored"
        head = "; ".join(f"{p}: {m}" for p, m in list(self.fields.items())[:5])
        more = len(self.fields) - 5
        suffix = f" (and {more} more, see fields)" if more > 0 else ""
        count = f"{len(self.fields)}+" if len(self.fields) >= MAX_ERRORS else str(len(self.fields))
        return f"{count} invalid field(s): {head}{suffix}; nothing was stored"


@dataclass
class GpuRow:
    index: int
    uuid: str
    name: str
    values: list[Any]
    # The GPU's object as sent when it is exactly what the row holds (index, uuid, name and every metric, each
    # stored as sent, nothing else): the latest snapshot then takes it as it is instead of building it again.
    as_sent: dict[str, Any] | None = None


@dataclass
class Sample:
    ts: datetime
    seq: int
    host_inference: list[Any]
    gpus: list[GpuRow]
    raw: dict[str, Any]


@dataclass
class Batch:
    node: str
    agent: str
    endpoint: str | None
    models: list[str] | None
    applied: dict[str, Any] | None
    samples: list[Sample]
    ignored: set[str] = field(default_factory=set)
    serving: dict[str, Any] | None = None  # what the inference server runs (dashboard/fleet/serving.py)


def fmt(value: Any) -> str:
    if isinstance(value, float) and value.is_integer() and abs(value) < 1e15:
        return str(int(value))
    text = repr(value)
    return text if len(text) <= 40 else text[:37] + "..."


def check_metric(m: Metric, value: Any, path: str, errors: Errors) -> Any:
    if value is None:
        return None  # a missing or unsupported metric is NULL, never 0
    if type(value) is bool or not isinstance(value, int | float):
        errors.add(path, f"{fmt(value)} is not a number (send null when the metric is unavailable)")
        return None
    if isinstance(value, float) and not math.isfinite(value):
        errors.add(path, f"{fmt(value)} is not a finite number")
        return None
    if value < m.lo:
        errors.add(path, f"{fmt(value)} is below {fmt(float(m.lo))}")
        return None
    if value > m.hi:
        errors.add(path, f"{fmt(value)} is above {fmt(float(m.hi))}")
        return None
    if m.integer:
        if isinstance(value, float):
            if not value.is_integer():
                errors.add(path, f"{fmt(value)} is not a whole number")
                return None
            return int(value)
        return value
    return float(value)  # binary COPY into real/double columns needs floats


def _compile(metrics: tuple[Metric, ...]) -> tuple[tuple[str, Any, Any, bool, Metric], ...]:
    return tuple((m.name, m.lo, m.hi, m.integer, m) for m in metrics)


# (name, lo, hi, integer, metric) per catalogue group: the loop below reads plain locals, not Metric attributes.
_SPECS = {id(ms): _compile(ms) for ms in (GPU_METRICS, HOST_METRICS, INFERENCE_METRICS)}


def _metrics(metrics: tuple[Metric, ...], obj: Any, path: str, errors: Errors, ignored: set[str]) -> list[Any]:
    return _metrics_sent(metrics, obj, path, errors, ignored)[0]


def _metrics_sent(metrics: tuple[Metric, ...], obj: Any, path: str, errors: Errors, ignored: set[str]
                  ) -> tuple[list[Any], bool]:
    """The metrics of one object, in catalogue order, and whether each is the value sent (all present, none
    converted) with no unknown key in the object. A value that is null, or an int or float within range (and
    whole for an integer metric) is taken in the loop; anything else goes to check_metric, the one place that
    words an error, so the messages and paths are the same whichever way a value takes. NaN and +-inf fail the
    range comparisons and so reach check_metric too. A valid push (289 values) builds no path string."""
    if obj is None:
        return [None] * len(metrics), False
    if not isinstance(obj, dict):
        errors.add(path, "must be an object of metric name to number or null")
        return [None] * len(metrics), False
    get = obj.get
    names, types, los, his = _FAST[id(metrics)]
    values = list(map(get, names))
    # The common object, all in C loops: every metric present with the type it is stored as (int for an integer
    # metric, float otherwise) and within range. NaN and +-inf fail a comparison; anything else (a null, an int for
    # a float metric, a bool, a string) takes the loop below, which words the errors.
    if tuple(map(type, values)) == types and all(map(le, los, values)) and all(map(le, values, his)):
        # Every metric is present: any other key than them and the GPU's ids is unknown.
        if len(obj) != len(names) + ("index" in obj) + ("uuid" in obj) + ("name" in obj):
            _note_unknown(metrics, obj, ignored)
            return values, False
        return values, True
    out: list[Any] = []
    append = out.append
    for name, lo, hi, integer, m in _SPECS[id(metrics)]:
        value = get(name)
        kind = type(value)
        if kind is float:
            if lo <= value <= hi:
                if not integer:
                    append(value)
                    continue
                if value.is_integer():
                    append(int(value))
                    continue
        elif kind is int:
            if lo <= value <= hi:
                append(value if integer else float(value))
                continue
        elif value is None:
            append(None)
            continue
        append(check_metric(m, value, f"{path}.{name}", errors))
    _note_unknown(metrics, obj, ignored)
    return out, False


def _note_unknown(metrics: tuple[Metric, ...], obj: dict[Any, Any], ignored: set[str]) -> None:
    # Unknown names are reported back, not refused: a newer agent must not lose its samples to an older server.
    extra = obj.keys() - _NAMES[id(metrics)] - GPU_ID_KEYS
    if extra and len(ignored) < 20:
        ignored.update(str(k)[:64] for k in list(extra)[:20])


_GPU_KEYS = len(GPU_METRICS) + len(GPU_ID_KEYS)  # a GPU object with its ids and every metric, nothing else
_NAMES = {id(ms): frozenset(m.name for m in ms) for ms in (GPU_METRICS, HOST_METRICS, INFERENCE_METRICS)}
# (names, the type each is stored as, lows, highs) per catalogue group, for the all-valid check of _metrics.
_FAST = {id(ms): (tuple(m.name for m in ms), tuple(int if m.integer else float for m in ms),
                  tuple(m.lo for m in ms), tuple(m.hi for m in ms))
         for ms in (GPU_METRICS, HOST_METRICS, INFERENCE_METRICS)}


def _string(obj: dict[str, Any], key: str, path: str, errors: Errors, max_len: int, required: bool = False
            ) -> str | None:
    value = obj.get(key)
    if value is None:
        if required:
            errors.add(path, "is required")
        return None
    if not isinstance(value, str):
        errors.add(path, f"{fmt(value)} is not a string")
        return None
    if len(value) > max_len:
        errors.add(path, f"is longer than {max_len} characters")
        return None
    if required and not value:
        errors.add(path, "must not be empty")
        return None
    return value


def _parse_ts(value: Any, path: str, errors: Errors, now: datetime, oldest: datetime) -> datetime | None:
    if not isinstance(value, str) or len(value) > 40:
        errors.add(path, f"{fmt(value)} is not an ISO 8601 timestamp string")
        return None
    try:
        ts = datetime.fromisoformat(value)
    except ValueError:
        errors.add(path, f"{fmt(value)} is not an ISO 8601 timestamp (e.g. 2026-11-28T14:00:05.000Z)")
        return None
    if ts.tzinfo is None:
        errors.add(path, f"{fmt(value)} has no timezone; send UTC with a trailing Z")
        return None
    try:
        ts = ts.astimezone(UTC)
    except OverflowError:  # e.g. 0001-01-01T00:00:00+14:00 is before year 1 in UTC
        errors.add(path, f"{value} is out of the range of timestamps")
        return None
    if ts > now + timedelta(seconds=300):
        errors.add(path, f"{value} is more than 5 minutes in the future (server time {now:%Y-%m-%dT%H:%M:%SZ}); "
                         "check the node's clock")
        return None
    if ts < oldest:
        errors.add(path, f"{value} is older than the raw retention ({oldest:%Y-%m-%dT%H:%M:%SZ})")
        return None
    return ts


def _gpu(obj: Any, path: str, errors: Errors, ignored: set[str], seen: set[int]) -> GpuRow | None:
    if not isinstance(obj, dict):
        errors.add(path, "must be an object")
        return None
    index = obj.get("index")
    if type(index) is not int or not 0 <= index < 256:
        errors.add(f"{path}.index", f"{fmt(index)} is not a GPU index (a whole number 0-255)")
        return None
    if index in seen:
        errors.add(f"{path}.index", f"GPU {index} appears twice in this sample")
        return None
    seen.add(index)
    uuid = _string(obj, "uuid", f"{path}.uuid", errors, 96) or ""
    name = _string(obj, "name", f"{path}.name", errors, 128) or ""
    values, as_sent = _metrics_sent(GPU_METRICS, obj, path, errors, ignored)
    # As sent: every metric and the three ids (uuid and name given as valid strings), and no other key.
    exact = as_sent and uuid is obj.get("uuid") and name is obj.get("name") and len(obj) == _GPU_KEYS
    return GpuRow(index, uuid, name, values, obj if exact else None)


def validate(doc: Any, now: datetime, oldest: datetime, max_samples: int) -> tuple[Batch | None, Errors]:
    errors = Errors()
    try:
        return _validate(doc, now, oldest, max_samples, errors), errors
    except TooManyErrors:
        return None, errors


def _validate(doc: Any, now: datetime, oldest: datetime, max_samples: int, errors: Errors) -> Batch | None:
    if not isinstance(doc, dict):
        errors.add("$", "the body must be a JSON object")
        return None
    raw_samples = doc.get("samples")
    # Checked before anything else: a batch too large is refused whole (413), whatever else is wrong with it.
    if isinstance(raw_samples, list) and len(raw_samples) > max_samples:
        errors.status = 413
        errors.add("samples", f"holds {len(raw_samples)} samples; the limit is {max_samples} per request "
                              "(SWITCHYARD_INGEST_MAX_SAMPLES): send smaller batches")
        return None
    node = _string(doc, "node", "node", errors, 63, required=True)
    agent = _string(doc, "agent", "agent", errors, 100) or ""
    endpoint = _string(doc, "endpoint", "endpoint", errors, 300)
    if endpoint is not None and endpoint and not endpoint.startswith(("http://", "https://")):
        errors.add("endpoint", f"{fmt(endpoint)} is not an http:// or https:// URL")
    models = doc.get("models")
    if models is not None:
        if not isinstance(models, list) or len(models) > MAX_MODELS:
            errors.add("models", f"must be a list of at most {MAX_MODELS} model names")
            models = None
        else:
            for i, name in enumerate(models):
                if not isinstance(name, str) or not 0 < len(name) <= 200:
                    errors.add(f"models[{i}]", f"{fmt(name)} is not a model name (1-200 characters)")
    applied = doc.get("applied")
    if applied is not None and not isinstance(applied, dict):
        errors.add("applied", "must be an object")
        applied = None
    serving = serving_block.check(doc.get("serving"), errors.add)
    unknown_top = [k for k in doc if k not in TOP_LEVEL_KEYS]
    if not isinstance(raw_samples, list) or not raw_samples:
        errors.add("samples", "must be a non-empty list of samples")
        return None
    ignored: set[str] = {f"${k[:64]}" for k in unknown_top}
    samples: list[Sample] = []
    for i, s in enumerate(raw_samples):
        path = f"samples[{i}]"
        if not isinstance(s, dict):
            errors.add(path, "must be an object")
            continue
        ts = _parse_ts(s.get("ts"), f"{path}.ts", errors, now, oldest)
        seq = s.get("seq")
        if type(seq) is not int or not 0 <= seq <= MAX_SEQ:
            errors.add(f"{path}.seq", f"{fmt(seq)} is not a sequence number (a whole number >= 0)")
        host = _metrics(HOST_METRICS, s.get("host"), f"{path}.host", errors, ignored)
        inference = _metrics(INFERENCE_METRICS, s.get("inference"), f"{path}.inference", errors, ignored)
        gpus_raw = s.get("gpus") or []
        gpus: list[GpuRow] = []
        if not isinstance(gpus_raw, list) or len(gpus_raw) > MAX_GPUS:
            errors.add(f"{path}.gpus", f"must be a list of at most {MAX_GPUS} GPUs")
        else:
            seen: set[int] = set()
            for j, g in enumerate(gpus_raw):
                row = _gpu(g, f"{path}.gpus[{j}]", errors, ignored, seen)
                if row is not None:
                    gpus.append(row)
        if ts is not None and type(seq) is int:
            samples.append(Sample(ts, seq, host + inference, gpus, s))
    if errors.fields or node is None:
        return None
    return Batch(node, agent, endpoint, models, applied, samples, ignored, serving=serving)
