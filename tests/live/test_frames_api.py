"""GET /api/v1/live/<topic>: the current frame for scripts, behind the viewer role, with clear errors."""

from __future__ import annotations

from typing import Any

from rest_framework.test import APIClient

from tests.conftest import make_user


def client_for(role: str | None) -> APIClient:
    api = APIClient()
    if role:
        api.credentials(HTTP_AUTHORIZATION=f"Token {make_user(f'api-{role}', role)}")
    return api


def test_anonymous_gets_401_and_json(fleet: dict[str, str]) -> None:
    resp = client_for(None).get("/api/v1/live/kpi")
    assert resp.status_code == 401 and "error" in resp.json()


def test_gpu_frame_has_a_row_per_node_and_a_column_per_gpu(fleet: dict[str, str]) -> None:
    api = client_for("viewer")
    frame = api.get("/api/v1/live/gpu:temp_c").json()
    assert [r["node"] for r in frame["rows"]] == ["gpu-a-2", "gpu-a-10", "gpu-b-1"]
    assert len(frame["columns"]) == len(frame["z"][0]) and frame["unit"] == "celsius"
    kpi = api.get("/api/v1/live/kpi").json()
    assert kpi["values"]["nodes_up"] == len(fleet)
    tail = api.get("/api/v1/live/tail:gpu-b-1").json()
    assert tail["node"] == "gpu-b-1" and tail["sample"]["gpus"]


def test_bad_topics_get_400_with_the_reason(fleet: dict[str, Any]) -> None:
    api = client_for("viewer")
    for topic, words in (("gpu:bogus_metric", "unknown GPU metric"), ("nonsense", "unknown topic"),
                         ("tail:no-such-node", "unknown node"), ("tail:BAD NAME", "not a node name"),
                         ("gpu:" + "x" * 400, "at most 300")):
        resp = api.get(f"/api/v1/live/{topic}")
        assert resp.status_code == 400, topic
        assert words in resp.json()["error"] and "topic" in resp.json()["fields"]
