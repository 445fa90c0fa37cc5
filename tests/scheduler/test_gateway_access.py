"""Who may ask the gateway for what: a token's class is a ceiling, revocation reaches every gateway at once, and
the read endpoints tell anonymous callers nothing about the fleet (items 2 and 4)."""

from __future__ import annotations

import threading
import time
from io import StringIO
from typing import Any

import httpx
import pytest
from django.core.management import call_command

from control.scheduler import auth
from control.scheduler.auth import internal_token
from core.tokens import digest
from tests.conftest import make_user
from tests.scheduler.conftest import Fleet
from tests.scheduler.test_gateway import chat, reqlog


def token_of_class(name: str, cls: str) -> str:
    out = StringIO()
    call_command("createuser", name, "--role", "viewer", "--class", cls, stdout=out)
    return out.getvalue().strip().splitlines()[-1]


def test_x_priority_may_lower_a_tokens_class_never_raise_it(fleet: Fleet, upstreams: Any, gateway: Any,
                                                            redis_db: Any) -> None:
    (node,) = upstreams(1)
    fleet.add(node.name, node.url)
    gw = gateway()
    gw.wait(lambda: gw.eligible() == {node.name}, what="node eligible")
    batch, plain, realtime = token_of_class("bulk", "batch"), make_user("plain", "viewer"), \
        token_of_class("rt", "realtime")

    refused = [chat(gw, batch, **{"X-Priority": "realtime"}), chat(gw, batch, **{"X-Priority": "standard"}),
               chat(gw, plain, **{"X-Priority": "realtime"})]
    assert [r.status_code for r in refused] == [403, 403, 403]
    messages = [r.json()["error"]["message"] for r in refused]
    assert messages[0] == ("X-Priority 'realtime' is above what this API token allows: its class is 'batch' "
                           "(X-Priority may only lower a request's class)")
    assert "its class is 'batch'" in messages[1] and "its class is 'standard'" in messages[2]
    assert {r.json()["error"]["param"] for r in refused} == {"X-Priority"}
    assert node.requests() == 0  # nothing refused was routed

    served = [chat(gw, batch), chat(gw, batch, **{"X-Priority": "batch"}), chat(gw, plain),
              chat(gw, plain, **{"X-Priority": "batch"}), chat(gw, realtime), chat(gw, realtime, **{"X-Priority":
                                                                                                      "standard"}),
              chat(gw, internal_token(), **{"X-Priority": "realtime"})]
    assert [r.status_code for r in served] == [200] * 7
    gw.wait(lambda: len([e for e in reqlog(redis_db) if e["status"] == "200"]) == 7, what="7 log entries")
    assert [e["class"] for e in reqlog(redis_db) if e["status"] == "200"] == \
        ["batch", "batch", "standard", "batch", "realtime", "standard", "realtime"]


def test_healthz_is_a_bare_liveness_answer_and_metrics_need_a_viewer(fleet: Fleet, upstreams: Any, gateway: Any,
                                                                      settings: Any) -> None:
    from django.contrib.auth import get_user_model

    from core.tokens import new_token
    from dashboard.accounts.models import UserToken

    (node,) = upstreams(1)
    fleet.add(node.name, node.url)
    gw = gateway()
    gw.wait(lambda: gw.eligible() == {node.name}, what="node eligible")
    viewer = make_user("watcher", "viewer")
    assert chat(gw, viewer).status_code == 200  # a node name now sits in the metrics' labels

    health = httpx.get(f"{gw.url}/healthz")
    assert health.status_code == 200 and health.json() == {"status": "ok"}

    anonymous = httpx.get(f"{gw.url}/metrics")
    assert anonymous.status_code == 401 and node.name not in anonymous.text
    assert "needs an API token of a user with the viewer role" in anonymous.json()["error"]["message"]
    assert httpx.get(f"{gw.url}/metrics", headers={"Authorization": "Bearer sy_user_nope"}).status_code == 401
    roleless, dig = new_token("user")
    UserToken.objects.create(user=get_user_model().objects.create(username="nobody"), prefix=roleless[:16],
                             digest=dig, name="no role")
    assert chat(gw, roleless).status_code == 200  # any active user's token may call the API
    forbidden = httpx.get(f"{gw.url}/metrics", headers={"Authorization": f"Bearer {roleless}"})
    assert forbidden.status_code == 403 and node.name not in forbidden.text
    for token in (viewer, internal_token()):
        metrics = httpx.get(f"{gw.url}/metrics", headers={"Authorization": f"Bearer {token}"})
        assert metrics.status_code == 200 and f'node="{node.name}"' in metrics.text

    settings.GATEWAY_METRICS_PUBLIC = True
    opened = gateway()
    assert httpx.get(f"{opened.url}/metrics").status_code == 200
    assert httpx.get(f"{opened.url}/healthz").json() == {"status": "ok"}


def test_a_revoked_token_is_refused_by_every_gateway_before_its_cache_entry_expires(
        fleet: Fleet, upstreams: Any, gateway: Any, redis_db: Any, monkeypatch: pytest.MonkeyPatch) -> None:
    from rest_framework.test import APIClient

    from dashboard.accounts.models import UserToken

    monkeypatch.setattr(auth, "POSITIVE_TTL_S", 3600.0)  # only the revocation message can end a cached entry
    (node,) = upstreams(1)
    fleet.add(node.name, node.url)
    gateways = [gateway(), gateway()]
    for gw in gateways:
        gw.wait(lambda gw=gw: gw.eligible() == {node.name}, what="node eligible")
    secret, other = make_user("leaky", "viewer"), make_user("careful", "viewer")
    for gw in gateways:
        assert chat(gw, secret).status_code == 200 and chat(gw, other).status_code == 200  # both cached now

    heard: list[bytes] = []
    pubsub = redis_db.pubsub()
    pubsub.subscribe("sy:tokens")
    listening = threading.Event()

    def listen() -> None:
        deadline = time.monotonic() + 15
        while time.monotonic() < deadline and not heard:
            msg = pubsub.get_message(timeout=0.2)
            if msg is not None and msg["type"] == "subscribe":
                listening.set()
            elif msg is not None and msg["type"] == "message":
                heard.append(msg["data"])

    listener = threading.Thread(target=listen)
    listener.start()
    assert listening.wait(10)
    owner = APIClient()
    owner.credentials(HTTP_AUTHORIZATION=f"Token {secret}")
    pk = UserToken.objects.get(digest=digest(secret)).pk
    assert owner.post(f"/api/v1/tokens/{pk}/revoke/", {"reason": "leaked"}, format="json").status_code == 200

    for gw in gateways:
        gw.wait(lambda gw=gw: chat(gw, secret).status_code == 401, timeout=10, what="the revoked token refused")
        assert chat(gw, secret).json()["error"]["message"] == "unknown or revoked API key"
        assert chat(gw, other).status_code == 200  # only that token's entry went
    listener.join(20)
    pubsub.close()
    assert heard == [digest(secret).encode()]  # the digest, never the secret
