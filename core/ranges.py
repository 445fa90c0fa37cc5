"""Named time ranges of the pages' APIs (`?range=1h`): one parser, so every endpoint answers a bad one alike."""

from __future__ import annotations

from collections.abc import Mapping
from typing import TypeVar

R = TypeVar("R")


class RangeError(ValueError):
    """An unknown range name; the message lists the names the endpoint takes."""


def parse_range(value: str | None, ranges: Mapping[str, R], default: str) -> R:
    """The range named `value` (the default when absent or empty)."""
    if value is None or value == "":
        return ranges[default]
    found = ranges.get(value)
    if found is None:
        raise RangeError(f"{value[:40]!r} is not a range; use one of {', '.join(ranges)}")
    return found
