"""The backend interface the push loop talks to, and the pieces every collector shares.

A backend produces one sample body per call: `{"host": {...}, "gpus": [...], "inference": {...}}` with every
catalogue name present and None for what could not be read. The real backend is NVML + psutil + a scrape of the
inference server; the simulated one (and, later, a whole simulated fleet with a virtual NVML module) plugs in
through the same small protocols.
"""

from __future__ import annotations

import math
from collections.abc import Iterable
from typing import Any, Protocol, runtime_checkable

from agents.catalogue import INFERENCE_METRICS, Metric

Metrics = dict[str, Any]


@runtime_checkable
class Backend(Protocol):
    def collect(self) -> dict[str, Any]:
        """One sample body: {"host": {...}, "gpus": [{index, uuid, name, ...}], "inference": {...}}."""
        ...

    def models(self) -> list[str] | None:
        """The models the node's inference server serves, or None when unknown."""
        ...

    def set_power_limit(self, index: int, watts: float) -> float | None:
        """Cap GPU `index` at `watts`; return the limit actually applied (after clamping), None on failure."""
        ...

    def close(self) -> None: ...


class GpuSource(Protocol):
    def collect(self) -> list[Metrics]: ...

    def set_power_limit(self, index: int, watts: float) -> float | None: ...

    def close(self) -> None: ...


class HostSource(Protocol):
    def collect(self) -> Metrics: ...


class InferenceSource(Protocol):
    def collect(self) -> Metrics: ...

    def models(self) -> list[str] | None: ...

    def close(self) -> None: ...


def empty(metrics: Iterable[Metric]) -> Metrics:
    return {m.name: None for m in metrics}


def finite(value: Any) -> float | None:
    """A float, or None for anything that is not a finite number (NaN from a scrape, a missing reading)."""
    if value is None or isinstance(value, bool):
        return None
    try:
        f = float(value)
    except (TypeError, ValueError):
        return None
    return f if math.isfinite(f) else None


def counter_rate(prev: float | None, cur: float | None, dt: float) -> float | None:
    """Per-second increase of a counter, None when it cannot be known (no previous value, reset, no time)."""
    if prev is None or cur is None or dt <= 0 or cur < prev:
        return None
    return (cur - prev) / dt


class CompositeBackend:
    """A backend assembled from a GPU, a host and (optionally) an inference-server source."""

    def __init__(self, gpus: GpuSource, host: HostSource, inference: InferenceSource | None) -> None:
        self.gpus = gpus
        self.host = host
        self.inference = inference

    def collect(self) -> dict[str, Any]:
        return {
            "host": self.host.collect(),
            "gpus": self.gpus.collect(),
            "inference": self.inference.collect() if self.inference is not None else empty(INFERENCE_METRICS),
        }

    def models(self) -> list[str] | None:
        return self.inference.models() if self.inference is not None else None

    def serving(self) -> dict[str, Any] | None:
        """What the inference server runs, when its source can tell (the simulator does; optional)."""
        read = getattr(self.inference, "serving", None)
        return read() if callable(read) else None

    def set_power_limit(self, index: int, watts: float) -> float | None:
        return self.gpus.set_power_limit(index, watts)

    def default_power_limit(self, index: int) -> float | None:
        # Optional on a GPU source: one without it cannot say what "uncapped" is, so caps are never restored.
        read = getattr(self.gpus, "default_power_limit", None)
        return read(index) if read is not None else None

    def close(self) -> None:
        self.gpus.close()
        if self.inference is not None:
            self.inference.close()

