"""Clients per role for the node and pools pages and their JSON endpoints."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import pytest
from django.contrib.auth import get_user_model
from django.test import Client

# The real-browser fixtures (a `manage.py serve` process, chromium via Playwright) for test_node_page_browser.
from tests.browser.conftest import chromium, page, server  # noqa: F401
from tests.conftest import make_user

ROLES = ("viewer", "operator", "admin")


@pytest.fixture
def session_as(db: None) -> Callable[[str], Client]:
    """A browser-like client logged in (session cookie) with the given role."""

    def _login(role: str) -> Client:
        name = f"{role}-user"
        if not get_user_model().objects.filter(username=name).exists():
            make_user(name, role)
        c = Client()
        assert c.login(username=name, password="correct-horse-battery")
        return c

    return _login


@pytest.fixture
def token_as(db: None) -> Callable[[str], Client]:
    """An automation client with the given role's API token."""

    def _client(role: str) -> Client:
        return Client(HTTP_AUTHORIZATION=f"Token {make_user(f'{role}-bot', role)}")

    return _client


@pytest.fixture
def viewer(token_as: Callable[[str], Client]) -> Client:
    return token_as("viewer")


def json_of(resp: Any) -> Any:
    assert resp["Content-Type"].startswith("application/json"), resp["Content-Type"]
    return resp.json()
