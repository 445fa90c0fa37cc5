"""The gateway skips nodes whose advertised max_model_len is too short for a request, says so in the request log,
and answers 400 context_length_exceeded when no node of the model is long enough (real ingest, real gateway)."""

from __future__ import annotations

import time
from typing import Any

from tests.scheduler.conftest import MODEL, Fleet
from tests.scheduler.test_gateway import chat, reqlog

LONG = {"model": MODEL, "messages": [{"role": "user", "content": "x" * 8000}], "max_tokens": 100}  # ~2,104 tokens


def test_long_requests_skip_short_nodes_with_the_reason_logged(fleet: Fleet, upstreams: Any, gateway: Any,
                                                               user_token: str, redis_db: Any) -> None:
    short, long = upstreams(2)
    fleet.add(short.name, short.url, serving={"model": MODEL, "max_model_len": 1024})
    fleet.add(long.name, long.url, serving={"model": MODEL, "max_model_len": 32768})
    gw = gateway()
    gw.wait(lambda: gw.eligible() == {short.name, long.name}, what="2 eligible nodes")
    answers = [chat(gw, user_token, LONG) for _ in range(8)]
    assert {r.status_code for r in answers} == {200}
    assert {r.headers["X-Switchyard-Node"] for r in answers} == {long.name}
    assert short.requests() == 0
    gw.wait(lambda: len(reqlog(redis_db)) >= 8, what="8 request-log entries")
    assert {e["filtered"] for e in reqlog(redis_db)} == {f"max_model_len < 2104: {short.name} (1024)"}
    # Short requests may go anywhere: nothing is filtered for them.
    assert chat(gw, user_token).status_code == 200

    # Both nodes now advertise a short context: the long request has nowhere to go.
    fleet.sample(long.name, serving={"model": MODEL, "max_model_len": 2048})
    deadline = time.monotonic() + 10
    while True:
        gw.refresh_now()
        refused = chat(gw, user_token, LONG)
        if refused.status_code == 400 or time.monotonic() > deadline:
            break
        time.sleep(0.1)
    assert refused.status_code == 400, refused.text
    error = refused.json()["error"]
    assert error["code"] == "context_length_exceeded" and error["param"] == "messages"
    assert "needs about 2104 tokens" in error["message"] and "max_model_len 2048" in error["message"]
    gw.wait(lambda: any(e["status"] == "400" for e in reqlog(redis_db)), what="the refusal in the request log")
    [logged] = [e for e in reqlog(redis_db) if e["status"] == "400"][-1:]
    assert "max_model_len 2048" in logged["error"]
