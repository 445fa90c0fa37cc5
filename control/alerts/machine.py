"""The alert state machine, pure: no database, no clock of its own (`now` is always passed in).

    inactive --true--> pending --true for for_s--> firing --false for keep_firing_for_s--> resolved
                          |                          ^  |
                          +--false--> inactive       +--+ true again within keep_firing_for_s: still firing

With for_s = 0 a true condition fires at once. A resolved track is finished; the next true condition starts a
new episode from inactive (a new alert row, with the same fingerprint). "No data" counts as false.
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from datetime import datetime, timedelta

INACTIVE, PENDING, FIRING, RESOLVED = "inactive", "pending", "firing", "resolved"


@dataclass(frozen=True)
class Track:
    state: str = INACTIVE
    active_at: datetime | None = None  # the condition became true (start of this episode)
    fired_at: datetime | None = None
    last_true_at: datetime | None = None
    resolved_at: datetime | None = None


def step(track: Track, condition: bool, now: datetime, for_s: float, keep_firing_for_s: float = 0) -> Track:
    """The track after one evaluation at `now` in which the rule's condition was `condition`."""
    if track.state in (INACTIVE, RESOLVED):
        if not condition:
            return track
        start = Track(PENDING, active_at=now, last_true_at=now)
        return _maybe_fire(start, now, for_s)
    if track.state == PENDING:
        if not condition:
            return Track()
        return _maybe_fire(replace(track, last_true_at=now), now, for_s)
    # FIRING
    if condition:
        return replace(track, last_true_at=now)
    last = track.last_true_at or track.fired_at or now
    if now - last >= timedelta(seconds=keep_firing_for_s):
        return replace(track, state=RESOLVED, resolved_at=now)
    return track


def _maybe_fire(track: Track, now: datetime, for_s: float) -> Track:
    assert track.active_at is not None
    if now - track.active_at >= timedelta(seconds=for_s):
        return replace(track, state=FIRING, fired_at=now)
    return track


def compare(value: float, comparison: str, threshold: float) -> bool:
    return {
        ">": value > threshold, ">=": value >= threshold, "<": value < threshold, "<=": value <= threshold,
        "==": value == threshold, "!=": value != threshold,
    }[comparison]
