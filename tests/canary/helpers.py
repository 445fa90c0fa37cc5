"""Helpers shared by the canary tests: a candidate revision stored without activating it, a canary started."""

from __future__ import annotations

import copy
from typing import Any

from control.policy.defaults import default_document

CANARY_URL = "/api/v1/policies/scheduler/canary/"
STEPS = [{"weight": 5, "pause_s": 0}, {"weight": 25, "pause_s": 0}, {"weight": 50, "pause_s": 0}]


def classic() -> dict[str, Any]:
    """The classic formula without the expected-wait term: a different, valid scheduler document."""
    doc = copy.deepcopy(default_document("scheduler"))
    for s in doc["scorers"]:
        if s["metric"] == "expected_wait":
            s["weight"] = 0.0
    return doc


def candidate(client: Any, document: dict[str, Any] | None = None) -> int:
    active = client.get("/api/v1/policies/scheduler/").json()
    r = client.post("/api/v1/policies/scheduler/revisions/",
                    {"document": document or classic(), "reason": "candidate", "parent": active["id"],
                     "activate": False}, format="json")
    assert r.status_code == 201, r.content
    return int(r.json()["id"])


def start(client: Any, revision: int, steps: list[dict[str, Any]] | None = None, **analysis: Any) -> Any:
    return client.post(CANARY_URL, {"revision": revision, "steps": steps or STEPS, "analysis": analysis,
                                    "reason": "try the candidate on a share"}, format="json")
