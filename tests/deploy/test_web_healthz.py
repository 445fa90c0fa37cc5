"""The web app's /healthz, which the Kubernetes probes and compose's health checks call: answered with the pod's
IP as Host (the kubelet's probe), without opening anything else to hosts ALLOWED_HOSTS refuses."""

from __future__ import annotations

import httpx
import pytest

from dashboard.asgi import application

POD_IP = "10.244.3.17:8000"


async def get(path: str, host: str, method: str = "GET") -> httpx.Response:
    transport = httpx.ASGITransport(app=application)
    async with httpx.AsyncClient(transport=transport, base_url=f"http://{host}") as client:
        return await client.request(method, path)


async def test_healthz_answers_a_probe_that_names_the_pod_ip() -> None:
    r = await get("/healthz", POD_IP)
    assert r.status_code == 200
    assert r.json() == {"status": "ok"}
    assert r.headers["cache-control"] == "no-store"


@pytest.mark.django_db
async def test_other_paths_still_refuse_a_host_that_is_not_allowed() -> None:
    for path in ("/accounts/login/", "/api/v1/nodes/", "/healthz/", "/healthzz"):
        r = await get(path, POD_IP)
        assert r.status_code == 400, path  # DisallowedHost, as before


@pytest.mark.django_db
async def test_only_get_is_answered_by_the_probe_path() -> None:
    r = await get("/healthz", "localhost", method="POST")
    assert r.status_code == 404  # Django's: no such page
