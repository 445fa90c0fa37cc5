"""POST /api/v1/ingest: the agent contract of DESIGN.md, good and bad input."""

from __future__ import annotations

import asyncio
import gzip
import json
import socket
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from django.core.management import call_command
from django.db import connection

from agents.catalogue import GPU_METRICS, HOST_METRICS, INFERENCE_METRICS
from dashboard.fleet.models import GPU, Node
from dashboard.metrics.latest import latest
from tests.conftest import AsgiResponse, count, free_port, full_sample, iso, make_node, wait_for_port

pytestmark = pytest.mark.usefixtures("clean_samples")


def body(*samples: dict[str, Any], node: str = "gpu-a-1", **extra: Any) -> dict[str, Any]:
    return {"node": node, "agent": "switchyard-agent/1.0", "samples": list(samples), **extra}


def stored() -> tuple[int, int]:
    return count("node_sample"), count("gpu_sample")


def test_happy_path_stores_every_catalogue_metric(push: Any) -> None:
    token = make_node()
    sample = full_sample(1, gpus=2)
    resp = push(token, body(sample, endpoint="http://10.0.3.17:8000", models=["deepseek-r1"]))
    assert resp.status_code == 200, resp.content
    assert resp.json() == {"accepted": 1, "duplicates": 0,
                           "desired": {"interval_s": None, "state": "active", "power_limit_w": {}}}
    with connection.cursor() as cur:
        cur.execute(f"SELECT {', '.join(m.name for m in GPU_METRICS)} FROM gpu_sample WHERE gpu = 1")
        gpu_row = dict(zip([m.name for m in GPU_METRICS], cur.fetchone(), strict=True))
        node_metrics = HOST_METRICS + INFERENCE_METRICS
        cur.execute(f"SELECT {', '.join(m.name for m in node_metrics)} FROM node_sample")
        node_row = dict(zip([m.name for m in node_metrics], cur.fetchone(), strict=True))
    for m in GPU_METRICS:
        assert gpu_row[m.name] == pytest.approx(sample["gpus"][1][m.name], rel=1e-6), m.name
    for m in HOST_METRICS:
        assert node_row[m.name] == pytest.approx(sample["host"][m.name], rel=1e-6), m.name
    for m in INFERENCE_METRICS:
        assert node_row[m.name] == pytest.approx(sample["inference"][m.name], rel=1e-6), m.name
    node = Node.objects.get(name="gpu-a-1")
    # An interval set for the node reaches its agent in the next reply.
    Node.objects.filter(pk=node.pk).update(interval_s=15)
    assert push(token, body(full_sample(2))).json()["desired"]["interval_s"] == 15
    assert node.endpoint == "http://10.0.3.17:8000"
    assert node.served_models == ["deepseek-r1"]
    assert node.last_seen is not None
    assert list(GPU.objects.filter(node=node).values_list("index", "uuid")) == [(0, "GPU-0000"), (1, "GPU-0001")]
    snap = latest("gpu-a-1")
    assert snap is not None and snap["seq"] == 2 and snap["pool"] == "pool-a"
    assert snap["gpus"][1]["gpu_util_pct"] == sample["gpus"][1]["gpu_util_pct"]


def test_null_metrics_are_stored_as_null_not_zero(push: Any) -> None:
    token = make_node()
    sample = full_sample(1, gpus=1)
    sample["gpus"][0]["fan_pct"] = None
    del sample["gpus"][0]["sm_active_pct"]
    sample["inference"] = None
    assert push(token, body(sample)).status_code == 200
    with connection.cursor() as cur:
        cur.execute("SELECT fan_pct, sm_active_pct, gpu_util_pct FROM gpu_sample")
        assert cur.fetchone()[:2] == (None, None)
        cur.execute("SELECT requests_running, kv_cache_usage_pct, cpu_util_pct FROM node_sample")
        row = cur.fetchone()
    assert row[0] is None and row[1] is None and row[2] is not None


def test_gzip_body_and_batches(push: Any) -> None:
    token = make_node()
    now = datetime.now(UTC)
    samples = [full_sample(i, now - timedelta(seconds=5 * (10 - i))) for i in range(10)]
    raw = gzip.compress(json.dumps(body(*samples)).encode())
    resp = push(token, None, raw=raw, **{"Content-Encoding": "gzip"})
    assert resp.status_code == 200, resp.content
    assert resp.json()["accepted"] == 10
    assert stored() == (10, 20)


def test_duplicate_seq_is_counted_not_stored_twice(push: Any) -> None:
    token = make_node()
    first = full_sample(7)
    assert push(token, body(first)).json()["accepted"] == 1
    resp = push(token, body(first, full_sample(8)))
    assert resp.status_code == 200
    assert resp.json()["accepted"] == 1 and resp.json()["duplicates"] == 1
    assert stored() == (2, 4)
    # The same seq twice inside one batch is a duplicate too.
    again = full_sample(9)
    resp = push(token, body(again, again))
    assert (resp.json()["accepted"], resp.json()["duplicates"]) == (1, 1)
    assert stored() == (3, 6)


def bad_cases() -> list[tuple[str, Any, str, str]]:
    """(case id, mutation of a valid sample, field path in the error, words in its message)."""

    def gpu(metric: str, value: Any) -> Any:
        def mutate(s: dict[str, Any]) -> None:
            s["gpus"][1][metric] = value
        return mutate

    def host(metric: str, value: Any) -> Any:
        def mutate(s: dict[str, Any]) -> None:
            s["host"][metric] = value
        return mutate

    def field(key: str, value: Any) -> Any:
        def mutate(s: dict[str, Any]) -> None:
            s[key] = value() if callable(value) else value
        return mutate

    # Computed when the test runs, not at collection: the suite takes minutes, and a timestamp
    # taken at collection drifts inside the 5-minute tolerance by the time the case runs.
    def future() -> str:
        return iso(datetime.now(UTC) + timedelta(minutes=10))

    def ancient() -> str:
        return iso(datetime.now(UTC) - timedelta(days=30))
    return [
        ("above-range", gpu("gpu_util_pct", 140), "samples[0].gpus[1].gpu_util_pct", "140 is above 100"),
        ("below-range", gpu("temp_c", -80), "samples[0].gpus[1].temp_c", "-80 is below -50"),
        ("negative-bytes", host("mem_used_bytes", -1), "samples[0].host.mem_used_bytes", "-1 is below 0"),
        ("wrong-type", gpu("power_w", "300W"), "samples[0].gpus[1].power_w", "is not a number"),
        ("bool", host("cpu_util_pct", True), "samples[0].host.cpu_util_pct", "is not a number"),
        ("fraction-in-int", gpu("pstate", 1.5), "samples[0].gpus[1].pstate", "not a whole number"),
        ("future-ts", field("ts", future), "samples[0].ts", "in the future"),
        ("ancient-ts", field("ts", ancient), "samples[0].ts", "older than the raw retention"),
        ("naive-ts", field("ts", "2026-11-28T14:00:05"), "samples[0].ts", "no timezone"),
        ("garbage-ts", field("ts", "yesterday"), "samples[0].ts", "not an ISO 8601 timestamp"),
        ("ts-before-year-1-in-utc", field("ts", "0001-01-01T00:00:00+14:00"), "samples[0].ts", "out of the range"),
        ("negative-seq", field("seq", -1), "samples[0].seq", "not a sequence number"),
        ("string-seq", field("seq", "12"), "samples[0].seq", "not a sequence number"),
        ("host-not-object", field("host", [1, 2]), "samples[0].host", "must be an object"),
        ("bad-gpu-index", gpu("index", 999), "samples[0].gpus[1].index", "not a GPU index"),
        ("duplicate-gpu", gpu("index", 0), "samples[0].gpus[1].index", "appears twice"),
        ("huge-uuid", gpu("uuid", "x" * 500), "samples[0].gpus[1].uuid", "longer than 96"),
    ]


@pytest.mark.parametrize("case", bad_cases(), ids=lambda c: c[0])
def test_bad_values_get_400_naming_the_field_and_store_nothing(push: Any, case: Any) -> None:
    _, mutate, path, words = case
    token = make_node()
    good, bad = full_sample(1), full_sample(2)
    mutate(bad)
    # The valid sample in the same batch must not be stored either.
    resp = push(token, body(bad, good))
    assert resp.status_code == 400, resp.content
    err = resp.json()
    assert err["fields"][path].find(words) >= 0, err
    assert path in err["error"] and "nothing was stored" in err["error"]
    assert stored() == (0, 0)
    assert latest("gpu-a-1") is None


@pytest.mark.parametrize("literal,word", [("NaN", "NaN"), ("Infinity", "inf"), ("-Infinity", "-inf")])
def test_nan_and_infinity_are_named(push: Any, literal: str, word: str) -> None:
    token = make_node()
    text = json.dumps(body(full_sample(1))).replace('"gpu_util_pct": ', f'"gpu_util_pct": {literal}, "x_": ', 1)
    resp = push(token, None, raw=text.encode())
    assert resp.status_code == 400, resp.content
    msg = resp.json()["fields"]["samples[0].gpus[0].gpu_util_pct"]
    assert "not a finite number" in msg and word.lower() in msg.lower()
    assert stored() == (0, 0)


def test_errors_are_collected_with_paths(push: Any) -> None:
    token = make_node()
    bad = full_sample(1)
    bad["gpus"][0]["gpu_util_pct"] = 101
    bad["gpus"][1]["temp_c"] = 400
    resp = push(token, body(full_sample(0), bad))
    fields = resp.json()["fields"]
    assert fields == {"samples[1].gpus[0].gpu_util_pct": "101 is above 100",
                      "samples[1].gpus[1].temp_c": "400 is above 150"}


@pytest.mark.parametrize(
    "doc,path",
    [
        ([1, 2, 3], "$"),
        ({"samples": []}, "samples"),
        ({"node": "gpu-a-1", "samples": "many"}, "samples"),
        ({"node": "gpu-a-1", "samples": [full_sample(1)], "models": "deepseek"}, "models"),
        ({"node": "gpu-a-1", "samples": [full_sample(1)], "endpoint": "javascript:alert(1)"}, "endpoint"),
        ({"node": "gpu-a-1", "samples": ["<script>"]}, "samples[0]"),
    ],
)
def test_malformed_documents(push: Any, doc: Any, path: str) -> None:
    token = make_node()
    resp = push(token, doc)
    assert resp.status_code == 400
    assert path in resp.json()["fields"]
    assert stored() == (0, 0)


def test_malformed_json(push: Any) -> None:
    token = make_node()
    resp = push(token, None, raw=b'{"node": "gpu-a-1", "samples": [')
    assert resp.status_code == 400
    assert "not valid JSON" in resp.json()["error"]
    deep = b"[" * 100_000 + b"]" * 100_000
    resp = push(token, None, raw=deep)
    assert resp.status_code == 400
    assert stored() == (0, 0)


def test_auth_failures(push: Any) -> None:
    token = make_node()
    other = make_node("gpu-b-1", "pool-b")
    resp = push(None, body(full_sample(1)))
    assert resp.status_code == 401 and "missing node token" in resp.json()["error"]
    assert resp["WWW-Authenticate"].startswith("Bearer")
    resp = push("sy_node_not-a-real-token", body(full_sample(1)))
    assert resp.status_code == 401 and "unknown or revoked" in resp.json()["error"]
    resp = push(other, body(full_sample(1)))
    assert resp.status_code == 403
    assert "belongs to node 'gpu-b-1'" in resp.json()["error"] and "node" in resp.json()["fields"]
    resp = push(token, body(full_sample(1), node="no-such-node"))
    assert resp.status_code == 403
    assert stored() == (0, 0)


def test_rotate_invalidates_the_old_token(push: Any) -> None:
    from io import StringIO

    old = make_node()
    out = StringIO()
    call_command("createnode", "gpu-a-1", "--pool", "pool-a", "--rotate", stdout=out)
    new = out.getvalue().strip().splitlines()[-1]
    assert new != old and new.startswith("sy_node_")
    assert push(old, body(full_sample(1))).status_code == 401
    assert push(new, body(full_sample(1))).status_code == 200


def test_oversize_body_is_413(push: Any, settings: Any) -> None:
    settings.INGEST_MAX_BYTES = 50_000
    settings.DATA_UPLOAD_MAX_MEMORY_SIZE = 50_000
    token = make_node()
    samples = [full_sample(i, datetime.now(UTC) - timedelta(seconds=i)) for i in range(40)]
    resp = push(token, body(*samples))
    assert resp.status_code == 413
    assert "limit" in resp.json()["error"]
    # A small gzip body that inflates past the limit (a zip bomb) is refused too.
    bomb = gzip.compress(b" " * 5_000_000)
    resp = push(token, None, raw=bomb, **{"Content-Encoding": "gzip"})
    assert resp.status_code == 413
    assert stored() == (0, 0)


def test_too_many_samples_in_one_request_is_413_and_stores_nothing(push: Any, settings: Any) -> None:
    """Too many samples is the size of the push, not a bad sample: 413 makes the agent halve its batch, where a
    400 would make it dead-letter samples that are fine."""
    settings.INGEST_MAX_SAMPLES = 3
    token = make_node()
    samples = [full_sample(i, datetime.now(UTC) - timedelta(seconds=i), gpus=0) for i in range(4)]
    resp = push(token, body(*samples))
    assert resp.status_code == 413, resp.content
    err = resp.json()
    assert "holds 4 samples; the limit is 3 per request" in err["fields"]["samples"]
    assert "send smaller batches" in err["error"] and "nothing was stored" in err["error"]
    assert stored() == (0, 0) and latest("gpu-a-1") is None
    # Still 413, not a 400 naming a sample, when a sample of the oversized batch is also bad.
    samples[0]["gpus"] = [{"index": 0, "gpu_util_pct": 140}]
    resp = push(token, body(*samples))
    assert resp.status_code == 413 and list(resp.json()["fields"]) == ["samples"]
    # Exactly at the limit is fine.
    assert push(token, body(*samples[1:])).json()["accepted"] == 3


def test_rate_limit_answers_429_with_retry_after(push: Any, settings: Any) -> None:
    settings.INGEST_RATE_PER_MINUTE = 2
    token = make_node()
    codes = [push(token, body(full_sample(i))).status_code for i in range(3)]
    # The minute window can roll over between pushes; allow that one retry.
    if codes[2] == 200:
        codes = [push(token, body(full_sample(i + 10))).status_code for i in range(3)]
    assert codes[-1] == 429
    resp = push(token, body(full_sample(99)))
    assert resp.status_code == 429 and 1 <= int(resp["Retry-After"]) <= 60
    assert count("node_sample") <= 4


def test_unknown_metrics_are_reported_not_refused(push: Any) -> None:
    token = make_node()
    sample = full_sample(1)
    sample["gpus"][0]["future_metric_pct"] = 3
    resp = push(token, body(sample))
    assert resp.status_code == 200
    assert resp.json()["ignored"] == ["future_metric_pct"]


def test_wrong_method_and_encoding(push: Any) -> None:
    token = make_node()
    resp = push(token, None, raw=b"", method="GET")
    assert resp.status_code == 405 and resp["Allow"] == "POST"
    resp = push(token, None, raw=b"xx", **{"Content-Encoding": "br"})
    assert resp.status_code == 415
    resp = push(token, None, raw=b"not gzip", **{"Content-Encoding": "gzip"})
    assert resp.status_code == 400 and "gzip" in resp.json()["error"]


def test_every_answer_carries_its_own_request_id(push: Any) -> None:
    token = make_node()
    ok = push(token, body(full_sample(1)))
    bad = push("sy_node_not-a-token", body(full_sample(2)))
    assert (ok.status_code, bad.status_code) == (200, 401)
    ids = {ok["x-request-id"], bad["x-request-id"]}
    assert len(ids) == 2 and all(len(i) == 32 and int(i, 16) >= 0 for i in ids)


def _ingest_with_unread_body(headers: dict[str, str]) -> tuple[AsgiResponse, list[str]]:
    """Drive the ASGI app with a client that announces a body and never sends it; returns the reply and the
    receive() calls the app made (each answered as if the client had gone away)."""
    from dashboard.asgi import application

    scope = {
        "type": "http", "asgi": {"version": "3.0"}, "http_version": "1.1", "method": "POST", "scheme": "http",
        "path": "/api/v1/ingest", "raw_path": b"/api/v1/ingest", "query_string": b"", "root_path": "",
        "headers": [(k.lower().encode(), v.encode()) for k, v in headers.items()],
        "client": ("127.0.0.1", 50000), "server": ("testserver", 80),
    }
    received: list[str] = []
    sent: list[dict[str, Any]] = []

    async def receive() -> dict[str, Any]:
        received.append("receive")
        return {"type": "http.disconnect"}

    async def send(message: dict[str, Any]) -> None:
        sent.append(message)

    asyncio.run(application(scope, receive, send))
    assert sent, "no reply at all: the app waited for the body"
    reply = AsgiResponse(sent[0]["status"], {k.decode().lower(): v.decode() for k, v in sent[0]["headers"]},
                         b"".join(m.get("body", b"") for m in sent[1:]))
    return reply, received


@pytest.mark.parametrize("length", ["100000000", "1000000", None], ids=["over-limit", "under-limit", "chunked"])
def test_bad_tokens_get_401_before_the_body_is_read(length: str | None) -> None:
    from io import StringIO

    good = make_node()
    call_command("createnode", "gpu-a-1", "--pool", "pool-a", "--rotate", stdout=StringIO())  # revokes `good`
    size = {"Content-Length": length} if length else {"Transfer-Encoding": "chunked"}
    for auth, words in [({}, "missing node token"),
                        ({"Authorization": "Bearer sy_node_not-a-real-token"}, "unknown or revoked"),
                        ({"Authorization": f"Bearer {good}"}, "unknown or revoked"),
                        ({"Authorization": "Token sy_node_wrong-scheme"}, "missing node token")]:
        reply, received = _ingest_with_unread_body({"Content-Type": "application/json", **size, **auth})
        assert reply.status_code == 401 and words in reply.json()["error"], reply.content
        assert received == [], "the body was read before the token was checked"
        assert reply["connection"] == "close"  # nothing more is read from this client either
    assert stored() == (0, 0)


def test_rate_limited_node_gets_429_before_the_body_is_read(push: Any, settings: Any) -> None:
    settings.INGEST_RATE_PER_MINUTE = 0
    token = make_node()
    reply, received = _ingest_with_unread_body({"Authorization": f"Bearer {token}", "Content-Length": "500000"})
    assert reply.status_code == 429 and received == [] and reply["Retry-After"]
    assert stored() == (0, 0)


@pytest.fixture
def ingest_server() -> Iterator[int]:
    """The real ASGI app under uvicorn on a thread of this process (its ingest threads use the test database)."""
    import threading

    import uvicorn

    from dashboard.asgi import application

    port = free_port()
    server = uvicorn.Server(uvicorn.Config(application, host="127.0.0.1", port=port, lifespan="off",
                                           log_level="warning"))
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    wait_for_port(port)
    yield port
    server.should_exit = True
    thread.join(15)


def _raw_post(port: int, token: str, declared: int, body: bytes, close: bool = False) -> bytes:
    """Send a POST's headers (and `body`, possibly less than `declared`) over a raw socket, then read until the
    server closes. The 30-s timeout only guards against a hang: a server that waits for the body fails here."""
    head = (f"POST /api/v1/ingest HTTP/1.1\r\nHost: 127.0.0.1\r\nAuthorization: Bearer {token}\r\n"
            f"Content-Type: application/json\r\nContent-Length: {declared}\r\n"
            + ("Connection: close\r\n" if close else "") + "\r\n").encode()
    with socket.create_connection(("127.0.0.1", port), timeout=30) as sock:
        sock.sendall(head + body)
        data = b""
        while chunk := sock.recv(65536):
            data += chunk
    return data


def test_a_raw_client_with_a_bad_token_gets_401_without_sending_its_body(ingest_server: int) -> None:
    token = make_node()
    # Headers only, then silence; then a slow client that sent 1 KiB of a 3 MB body and stalls.
    for partial in (b"", b"{" + b" " * 1023):
        answer = _raw_post(ingest_server, "sy_node_not-a-real-token", 3_000_000, partial)
        assert answer.startswith(b"HTTP/1.1 401 "), answer[:200]
        assert b"unknown or revoked node token" in answer
    # The same server still takes a real push over a raw socket.
    payload = json.dumps(body(full_sample(1))).encode()
    answer = _raw_post(ingest_server, token, len(payload), payload, close=True)
    assert answer.startswith(b"HTTP/1.1 200 ") and stored() == (1, 2)


def test_the_latest_snapshot_holds_each_gpu_as_stored_whether_or_not_it_came_exactly_as_stored(push: Any) -> None:
    """A GPU object that holds exactly its row goes into the latest snapshot as sent; any other (a whole float for
    an integer metric, an int for a float one, an unknown key, a null uuid, a missing name) is built from the
    checked values: either way the snapshot is the same catalogue-ordered, converted, known-keys-only object."""
    token = make_node()
    sample = full_sample(1, gpus=5)
    int_metric = next(m for m in GPU_METRICS if m.integer)
    float_metric = next(m for m in GPU_METRICS if not m.integer)
    sample["gpus"][1][int_metric.name] = float(sample["gpus"][1][int_metric.name])
    sample["gpus"][2][float_metric.name] = int(sample["gpus"][2][float_metric.name])
    sample["gpus"][3]["fan_rpm_future"] = 1200
    sample["gpus"][3]["uuid"] = None
    del sample["gpus"][4]["name"]
    resp = push(token, body(sample))
    assert resp.status_code == 200, resp.content
    assert resp.json()["ignored"] == ["fan_rpm_future"]
    gpus = latest("gpu-a-1")["gpus"]
    for sent, got in zip(sample["gpus"], gpus, strict=True):
        expected = {"index": sent["index"], "uuid": sent.get("uuid") or "", "name": sent.get("name") or "",
                    **{m.name: (int(sent[m.name]) if m.integer else float(sent[m.name])) for m in GPU_METRICS}}
        assert got == expected
        assert all(type(got[m.name]) is (int if m.integer else float) for m in GPU_METRICS)
    # Only the first came exactly as stored: it alone is taken as sent.
    from dashboard.fleet.validation import validate

    now = datetime.now(UTC)
    batch, errors = validate(body(sample), now, now - timedelta(days=7), 1000)
    assert batch is not None, errors.fields
    assert [g.as_sent is not None for g in batch.samples[0].gpus] == [True, False, False, False, False]
