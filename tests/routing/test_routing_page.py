"""The /routing/ page: viewers get it with its script and Plotly; anonymous users go to login; no role is 403."""

from __future__ import annotations

from collections.abc import Callable

import pytest
from django.contrib.auth import get_user_model
from django.test import Client
from django.urls import reverse

pytestmark = pytest.mark.django_db


def test_viewer_gets_the_routing_page(browser: Callable[..., Client]) -> None:
    assert reverse("routing") == "/routing/"
    resp = browser("viewer").get("/routing/?window=300")
    assert resp.status_code == 200
    html = resp.content.decode()
    assert "/static/vendor/plotly.min.js" in html and "/static/switchyard/routing.js" in html
    assert 'id="share-plot"' in html and 'id="score-plot"' in html and 'id="routing-classes"' in html
    assert '<option value="300" selected>' in html
    assert '"summary_url": "/api/v1/routing/summary"' in html


def test_anonymous_is_sent_to_login_and_a_user_without_role_is_refused(db: None) -> None:
    resp = Client().get("/routing/")
    assert resp.status_code == 302 and resp["Location"].startswith("/accounts/login/?next=/routing/")
    get_user_model().objects.create_user("norole", password="pw-pw-pw-pw")
    client = Client()
    assert client.login(username="norole", password="pw-pw-pw-pw")
    assert client.get("/routing/").status_code == 403
