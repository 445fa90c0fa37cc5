"""Sign-in throttling: per user name and per client address, on the login page and the admin site."""

from __future__ import annotations

from typing import Any

import pytest
from django.test import Client

from tests.control.conftest import PASSWORD

WRONG = "not-the-password"


@pytest.fixture(autouse=True)
def _limits(settings: Any, redis_db: Any) -> None:
    settings.LOGIN_MAX_FAILURES_PER_USER = 3
    settings.LOGIN_MAX_FAILURES_PER_ADDRESS = 5
    settings.LOGIN_WINDOW_S = 600


def sign_in(username: str, password: str, address: str = "10.0.0.1", url: str = "/accounts/login/") -> Any:
    client = Client()
    response = client.post(url, {"username": username, "password": password}, REMOTE_ADDR=address)
    response.signed_in = "_auth_user_id" in client.session
    return response


def test_a_user_name_is_locked_after_its_failures_from_any_address(tokens: dict[str, str]) -> None:
    for i in range(3):
        r = sign_in("viewer", WRONG, f"10.0.0.{i + 1}")
        assert r.status_code == 200 and "Wrong user name or password" in r.content.decode()
    r = sign_in("viewer", PASSWORD, "10.0.9.9")  # the right password, from a fresh address: still refused
    assert r.status_code == 429 and not r.signed_in
    assert 0 < int(r["Retry-After"]) <= 600
    page = r.content.decode()
    assert "Too many failed sign-ins for this user name" in page and "Try again in 10 minutes" in page
    assert "createuser" in page  # says what to do
    # Another user is not affected.
    assert sign_in("operator", PASSWORD, "10.0.9.9").signed_in


def test_an_address_is_locked_after_failures_across_user_names(tokens: dict[str, str]) -> None:
    for name in ("a1", "a2", "a3", "a4", "a5"):
        assert sign_in(name, WRONG, "10.0.0.7").status_code == 200
    r = sign_in("admin", PASSWORD, "10.0.0.7")
    assert r.status_code == 429 and not r.signed_in
    assert "Too many failed sign-ins for your address" in r.content.decode()
    assert sign_in("admin", PASSWORD, "10.0.0.8").signed_in


def test_a_correct_password_clears_the_user_names_count(tokens: dict[str, str]) -> None:
    for _ in range(2):
        sign_in("viewer", WRONG)
    assert sign_in("viewer", PASSWORD).signed_in
    for _ in range(2):
        assert sign_in("viewer", WRONG).status_code == 200
    assert sign_in("viewer", PASSWORD).signed_in


def test_the_admin_sign_in_is_throttled_too(tokens: dict[str, str]) -> None:
    for _ in range(3):
        sign_in("admin", WRONG, url="/admin/login/")
    r = sign_in("admin", PASSWORD, url="/admin/login/")
    assert not r.signed_in and "Too many failed sign-ins" in r.content.decode()
    # ...and shares its count with the login page: the same user name is locked there as well.
    assert sign_in("admin", PASSWORD).status_code == 429


@pytest.mark.parametrize("username", ["x" * 5000, "a\x00b", "ünï<script>", " "])
def test_hostile_user_names_are_refused_without_error(tokens: dict[str, str], username: str) -> None:
    r = sign_in(username, WRONG)
    assert r.status_code == 200 and not r.signed_in


def test_sign_in_is_not_throttled_when_redis_is_down(tokens: dict[str, str], monkeypatch: Any) -> None:
    from dashboard.accounts import throttle

    def broken() -> Any:
        raise ConnectionError("redis is down")

    for _ in range(4):
        sign_in("viewer", WRONG)
    monkeypatch.setattr(throttle, "_redis", broken)
    assert sign_in("viewer", PASSWORD).signed_in
