"""The scheduler policy's REST path for the tests of its sections: a bad field is refused naming it (nothing stored,
no audit record), then a good section is stored."""

from __future__ import annotations

import copy
from typing import Any

from rest_framework.test import APIClient

from control.policy.models import PolicyRevision
from core.audit.models import AuditEvent
from tests.conftest import make_user

URL = "/api/v1/policies/scheduler/"


def refused_then_stored(section: str, field: str, value: Any, good: dict[str, Any]) -> dict[str, Any]:
    """Posts the current document with `section.field = value` (400 naming the field, nothing stored), then with
    the sections in `good` replaced (201); returns the document the API then serves."""
    client = APIClient()
    client.credentials(HTTP_AUTHORIZATION=f"Token {make_user('operator', 'operator')}")
    current = client.get(URL).json()
    doc = copy.deepcopy(current["document"])
    doc.setdefault(section, {})[field] = value
    revisions, audits = PolicyRevision.objects.count(), AuditEvent.objects.count()
    bad = client.post(f"{URL}revisions/", {"document": doc, "reason": "bad field", "parent": current["id"]},
                      format="json")
    assert bad.status_code == 400, bad.content
    fields = bad.json()["fields"]
    assert f"document.{section}.{field}" in fields or f"{section}.{field}" in fields
    assert PolicyRevision.objects.count() == revisions and AuditEvent.objects.count() == audits
    doc = copy.deepcopy(current["document"])
    doc.update(copy.deepcopy(good))
    ok = client.post(f"{URL}revisions/", {"document": doc, "reason": "good", "parent": current["id"]}, format="json")
    assert ok.status_code == 201, ok.content
    return client.get(URL).json()["document"]
