"""An alert's identity: a stable hash of the rule name and its scope labels (sorted), independent of dict order,
process, Python's hash seed and the rule's severity (changing a severity must not page again as a "new" alert)."""

from __future__ import annotations

import hashlib

IDENTITY_LABELS = ("pool", "node", "gpu")


def fingerprint(rule: str, labels: dict[str, str]) -> str:
    parts = [rule] + [f"{k}={labels[k]}" for k in sorted(labels) if k in IDENTITY_LABELS]
    return hashlib.sha256("\x1f".join(parts).encode()).hexdigest()[:16]
