"""Helpers for the control-plane tests: one user per role, API clients, and audit-event bookkeeping."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import pytest
from django.test import Client
from rest_framework.test import APIClient

from core.audit.models import AuditEvent
from tests.conftest import make_user

ROLES = ("viewer", "operator", "admin")
PASSWORD = "correct-horse-battery"


@pytest.fixture(autouse=True)
def _fast_passwords(settings: Any) -> None:
    # Three users per test with PBKDF2 would spend most of the run hashing passwords.
    settings.PASSWORD_HASHERS = ["django.contrib.auth.hashers.MD5PasswordHasher"]


@pytest.fixture
def tokens(db: None) -> dict[str, str]:
    """An API token per role; the users are named after their roles."""
    return {role: make_user(role, role) for role in ROLES}


@pytest.fixture
def api(tokens: dict[str, str]) -> Callable[[str | None], APIClient]:
    """api(role) -> an APIClient sending that role's token; api(None) -> anonymous."""

    def make(role: str | None) -> APIClient:
        client = APIClient()
        if role is not None:
            client.credentials(HTTP_AUTHORIZATION=f"Token {tokens[role]}")
        return client

    return make


@pytest.fixture
def browser(tokens: dict[str, str]) -> Callable[[str | None], Client]:
    """browser(role) -> a logged-in Django test client that enforces CSRF like a real browser."""

    def make(role: str | None) -> Client:
        client = Client(enforce_csrf_checks=True)
        if role is not None:
            assert client.login(username=role, password=PASSWORD)
        return client

    return make


def csrf_post(client: Client, url: str, data: dict[str, Any]) -> Any:
    """GET the page first for the CSRF cookie, then POST the form with the token, as a browser does."""
    client.get("/policies/")  # any page sets the cookie: base.html's logout form carries a token
    token = client.cookies["csrftoken"].value
    return client.post(url, {**data, "csrfmiddlewaretoken": token})


def last_event_id() -> int:
    last = AuditEvent.objects.order_by("-id").first()
    return last.pk if last else 0


def events_since(mark: int) -> list[AuditEvent]:
    return list(AuditEvent.objects.filter(pk__gt=mark).order_by("id"))
