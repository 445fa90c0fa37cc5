"""The API tokens page: a token is shown once, works on the API, can be revoked there, and both are audited."""

from __future__ import annotations

import re
from collections.abc import Callable
from typing import Any

from rest_framework.test import APIClient

from dashboard.accounts.models import UserToken
from tests.control.conftest import csrf_post, events_since, last_event_id


def test_anonymous_goes_to_login(browser: Callable[..., Any]) -> None:
    response = browser(None).get("/account/tokens/")
    assert response.status_code == 302 and response["Location"].startswith("/accounts/login/?next=/account/tokens/")


def test_create_shows_the_secret_once_and_it_works_then_revoke_stops_it(browser: Callable[..., Any]) -> None:
    client = browser("viewer")
    mark = last_event_id()
    page = csrf_post(client, "/account/tokens/", {"name": "grafana", "reason": "dashboards"})
    assert page.status_code == 201
    secret = re.search(r'<pre id="token-secret">([^<]+)</pre>', page.content.decode()).group(1)  # type: ignore[union-attr]
    [event] = events_since(mark)
    assert (event.action, event.actor, event.reason) == ("token.create", "viewer", "dashboards")
    assert secret not in str(event.after) and secret not in client.get("/account/tokens/").content.decode()

    api = APIClient()
    api.credentials(HTTP_AUTHORIZATION=f"Token {secret}")
    assert api.get("/api/v1/nodes/").status_code == 200

    token = UserToken.objects.get(name="grafana")
    assert csrf_post(client, f"/account/tokens/{token.pk}/revoke/", {"reason": ""}).status_code == 302
    assert api.get("/api/v1/nodes/").status_code == 200  # no reason, nothing revoked
    mark = last_event_id()
    assert csrf_post(client, f"/account/tokens/{token.pk}/revoke/", {"reason": "leaked"}).status_code == 302
    assert api.get("/api/v1/nodes/").status_code == 401
    [event] = events_since(mark)
    assert (event.action, event.reason) == ("token.revoke", "leaked")


def test_bad_input_stores_nothing_and_others_tokens_are_out_of_reach(browser: Callable[..., Any]) -> None:
    client = browser("viewer")
    before = UserToken.objects.count()
    for data in ({"name": "", "reason": "x"}, {"name": "x", "reason": "  "}, {"name": "\x00", "reason": "x"}):
        response = csrf_post(client, "/account/tokens/", data)
        assert response.status_code == 302
        assert "needs a name and a reason" in client.get("/account/tokens/").content.decode()
    assert UserToken.objects.count() == before
    admins = UserToken.objects.filter(user__username="admin").first()
    assert csrf_post(client, f"/account/tokens/{admins.pk}/revoke/", {"reason": "x"}).status_code == 404
    assert UserToken.objects.get(pk=admins.pk).revoked is None
    # Without the CSRF token the form is refused.
    assert client.post("/account/tokens/", {"name": "x", "reason": "y"}).status_code == 403


def test_a_reload_of_the_create_answer_does_not_make_a_second_token(browser: Callable[..., Any]) -> None:
    client = browser("viewer")
    form = client.get("/account/tokens/").content.decode()
    nonce = re.search(r'name="once" value="([^"]+)"', form).group(1)  # type: ignore[union-attr]
    data = {"name": "grafana", "reason": "dashboards", "once": nonce}
    assert csrf_post(client, "/account/tokens/", data).status_code == 201
    mark = last_event_id()
    again = csrf_post(client, "/account/tokens/", data)  # what the browser's "resend the form?" does
    assert again.status_code == 302 and again["Location"] == "/account/tokens/"
    assert UserToken.objects.filter(name="grafana").count() == 1 and events_since(mark) == []
    assert "already sent" in client.get("/account/tokens/").content.decode()
    # A freshly rendered form has a new nonce and works.
    fresh = re.search(r'name="once" value="([^"]+)"', client.get("/account/tokens/").content.decode()).group(1)  # type: ignore[union-attr]
    assert fresh != nonce
    assert csrf_post(client, "/account/tokens/", {**data, "once": fresh}).status_code == 201
    assert UserToken.objects.filter(name="grafana").count() == 2


def test_a_viewer_cannot_give_a_token_a_class_above_the_default(browser: Callable[..., Any]) -> None:
    client = browser("viewer")
    before, mark = UserToken.objects.count(), last_event_id()
    refused = csrf_post(client, "/account/tokens/", {"name": "fast", "reason": "latency", "priority_class": "realtime"})
    assert refused.status_code == 302
    page = client.get("/account/tokens/").content.decode()
    assert "only an admin may issue a token of class &#x27;realtime&#x27;" in page
    assert UserToken.objects.count() == before and events_since(mark) == []
    assert csrf_post(client, "/account/tokens/", {"name": "slow", "reason": "nightly", "priority_class": "batch"}) \
        .status_code == 201
    admin = browser("admin")
    assert csrf_post(admin, "/account/tokens/", {"name": "fast", "reason": "pager", "priority_class": "realtime"}) \
        .status_code == 201
    assert UserToken.objects.get(name="fast").user.username == "admin"
