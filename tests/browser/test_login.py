"""Logging in through the real login form, and being sent back where one was going."""

from __future__ import annotations

from typing import Any

from tests.browser.conftest import PASSWORD, Server, make_user, screenshot


def test_anonymous_is_sent_to_login_and_back_to_the_page_asked_for(page: Any, server: Server) -> None:
    make_user("vera", "viewer")
    page.goto(f"{server.url}/heatmap/")
    assert "/accounts/login/" in page.url
    screenshot(page, "login")
    page.fill("input[name=username]", "vera")
    page.fill("input[name=password]", "wrong-password")
    page.click("button[type=submit]")
    assert "Wrong user name or password" in page.inner_text("main")
    page.fill("input[name=username]", "vera")
    page.fill("input[name=password]", PASSWORD)
    page.click("button[type=submit]")
    page.wait_for_url(f"{server.url}/heatmap/")
    assert "viewer" in page.inner_text("header")
    # Logging out is a POST with the CSRF token, and the next visit needs a login again.
    page.click("text=Log out")
    page.goto(f"{server.url}/heatmap/")
    assert "/accounts/login/" in page.url
    assert page.js_errors == []
