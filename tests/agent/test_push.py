"""The push loop against a real HTTP server on 127.0.0.1: batching, replay, dead letters, backoff, desired state.

Time is driven by a fake clock and sleep, so nothing here waits for real seconds or asserts wall-clock times.
"""

from __future__ import annotations

import gzip
import http.server
import json
import logging
import random
import re
import threading
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

from agents.catalogue import GPU_NAMES, HOST_NAMES, INFERENCE_NAMES
from agents.collectors.sim import SimBackend
from agents.push import AGENT, PushConfig, Pusher, StateDirBusy, normalize
from agents.spool import Spool

TOKEN = "sy-node-token-0123456789abcdef"


@dataclass
class Reply:
    status: int
    body: dict[str, Any] = field(default_factory=dict)
    headers: dict[str, str] = field(default_factory=dict)
    raw: bytes | None = None  # sent instead of `body` as JSON (a proxy's HTML page, say)

    @property
    def said(self) -> str:
        return self.raw.decode() if self.raw is not None else str(self.body["error"])


class IngestServer:
    """A stand-in for POST /api/v1/ingest: decodes gzip, records every request, answers as scripted.

    With no scripted reply it answers 200 like the real server: accepted/duplicates by (node, seq) and `desired`.
    `respond` may instead be a function of the decoded document.
    """

    def __init__(self, port: int = 0) -> None:
        self.requests: list[dict[str, Any]] = []
        self.seqs: list[int] = []  # every stored sample, in arrival order
        self.script: list[Reply] = []
        self.respond: Callable[[dict[str, Any]], Reply | None] | None = None
        self.desired: dict[str, Any] = {"interval_s": 5, "state": "active", "power_limit_w": {}}
        self.lock = threading.Lock()
        self._port = port
        self.httpd: http.server.ThreadingHTTPServer | None = None
        self.start()

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self._port}"

    def start(self) -> None:
        outer = self

        class Handler(http.server.BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                raw = self.rfile.read(int(self.headers["Content-Length"]))
                body = gzip.decompress(raw) if self.headers.get("Content-Encoding") == "gzip" else raw
                doc = json.loads(body)
                reply = outer._reply(self.path, dict(self.headers), doc)
                out = reply.raw if reply.raw is not None else json.dumps(reply.body).encode()
                self.send_response(reply.status)
                for k, v in {"Content-Type": "application/json", **reply.headers}.items():
                    self.send_header(k, v)
                self.send_header("Content-Length", str(len(out)))
                self.end_headers()
                self.wfile.write(out)

            def log_message(self, *args: object) -> None:
                pass

        self.httpd = http.server.ThreadingHTTPServer(("127.0.0.1", self._port), Handler)
        self.httpd.daemon_threads = True
        self._port = self.httpd.server_address[1]
        threading.Thread(target=self.httpd.serve_forever, daemon=True).start()

    def stop(self) -> None:
        if self.httpd is not None:
            self.httpd.shutdown()
            self.httpd.server_close()
            self.httpd = None

    def _reply(self, path: str, headers: dict[str, str], doc: dict[str, Any]) -> Reply:
        with self.lock:
            self.requests.append({"path": path, "headers": headers, "doc": doc})
            reply = self.respond(doc) if self.respond is not None else None
            if reply is None and self.script:
                reply = self.script.pop(0)
            if reply is not None:
                return reply
            new = [s["seq"] for s in doc["samples"] if s["seq"] not in self.seqs]
            self.seqs.extend(new)
            return Reply(200, {"accepted": len(new), "duplicates": len(doc["samples"]) - len(new),
                               "desired": self.desired})

    def batches(self) -> list[list[int]]:
        return [[s["seq"] for s in r["doc"]["samples"]] for r in self.requests]


class FakeTime:
    def __init__(self) -> None:
        self.t = 1000.0
        self.sleeps: list[float] = []

    def clock(self) -> float:
        return self.t

    def sleep(self, seconds: float) -> None:
        self.sleeps.append(seconds)
        self.t += seconds



@pytest.fixture
def ft() -> FakeTime:
    return FakeTime()


@pytest.fixture
def make(tmp_path: Path, ft: FakeTime) -> Iterator[Callable[..., Pusher]]:
    made: list[Pusher] = []

    def factory(url: str, backend: Any = None, state: str = "state", **config: Any) -> Pusher:
        cfg = PushConfig(server=url, token=TOKEN, node="gpu-a-1", state_dir=tmp_path / state, timeout_s=2.0,
                         **config)
        pusher = Pusher(cfg, backend if backend is not None else SimBackend(gpus=2, seed=0), clock=ft.clock,
                        sleep=ft.sleep, rng=random.Random(7))
        made.append(pusher)
        return pusher

    yield factory
    for p in made:
        p.close()


def dead_letters(pusher: Pusher) -> list[dict[str, Any]]:
    if not pusher.deadletter_path.exists():
        return []
    return [json.loads(line) for line in pusher.deadletter_path.read_text().splitlines()]


# -- the payload ----------------------------------------------------------------------------------------------

def test_once_pushes_a_complete_gzip_payload(server: IngestServer, make: Callable[..., Pusher]) -> None:
    pusher = make(server.url, endpoint="http://10.0.3.17:8000")
    assert pusher.once()
    req = server.requests[0]
    assert req["path"] == "/api/v1/ingest"
    assert req["headers"]["Authorization"] == f"Bearer {TOKEN}"
    assert req["headers"]["Content-Encoding"] == "gzip"
    doc = req["doc"]
    assert list(doc) == ["node", "agent", "endpoint", "applied", "samples"]  # no models: the sim serves none
    assert doc["node"] == "gpu-a-1" and doc["agent"] == AGENT == "switchyard-agent/1.0"
    assert doc["endpoint"] == "http://10.0.3.17:8000"
    assert doc["applied"] == {"interval_s": 5, "power_limit_w": {}, "power_asked_w": {},
                              "power_default_w": {"0": 700.0, "1": 700.0}}
    (s,) = doc["samples"]
    assert s["seq"] == 1
    assert re.fullmatch(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}Z", s["ts"])
    assert set(s["host"]) == HOST_NAMES and set(s["inference"]) == INFERENCE_NAMES
    assert len(s["gpus"]) == 2 and all(set(g) == GPU_NAMES | {"index", "uuid", "name"} for g in s["gpus"])
    assert s["host"]["net_rtt_ms"] is None  # nothing measured before the first push
    assert len(pusher.spool) == 0

    assert pusher.once()
    assert server.requests[1]["doc"]["samples"][0]["host"]["net_rtt_ms"] >= 0


def test_models_from_the_backend_are_sent(server: IngestServer, make: Callable[..., Pusher]) -> None:
    class WithModels(SimBackend):
        def models(self) -> list[str] | None:
            return ["deepseek-r1", "", "x" * 500, "llama"]

    assert make(server.url, backend=WithModels(gpus=1, seed=0)).once()
    assert server.requests[0]["doc"]["models"] == ["deepseek-r1", "llama"]  # names the server would refuse: dropped


def test_normalize_holds_values_to_the_catalogue() -> None:
    body = normalize({
        "host": {"cpu_util_pct": 100.0000001, "load1": float("nan"), "mem_used_bytes": 12.0, "bogus": 1},
        "gpus": [{"index": 0, "uuid": "GPU-1", "name": "H100", "temp_c": 400.0, "pstate": 2.0, "gpu_util_pct": True}],
        "inference": None,
    })
    assert body["host"]["cpu_util_pct"] == 100.0  # rounding overshoot of a percentage: clamped
    assert body["host"]["load1"] is None and "bogus" not in body["host"]
    assert body["host"]["mem_used_bytes"] == 12 and isinstance(body["host"]["mem_used_bytes"], int)
    assert set(body["host"]) == HOST_NAMES
    g = body["gpus"][0]
    assert g["temp_c"] is None  # an impossible reading is null, not a refused batch
    assert g["pstate"] == 2 and isinstance(g["pstate"], int)
    assert g["gpu_util_pct"] is None
    assert all(v is None for v in body["inference"].values())


# -- outages and restarts -------------------------------------------------------------------------------------

def test_buffer_and_replay_across_a_real_outage(server: IngestServer, make: Callable[..., Pusher],
                                                ft: FakeTime) -> None:
    pusher = make(server.url)
    pusher.run(max_iterations=3)
    assert server.seqs == [1, 2, 3]

    server.stop()
    pusher.run(max_iterations=6)
    assert len(pusher.spool) == 6 and server.seqs == [1, 2, 3]
    assert "ConnectError" in (pusher.last_error or "")

    server.start()  # the same port again
    pusher.run(max_iterations=13)  # long enough for any backoff (at most 60 s) to run out
    assert server.seqs == list(range(1, 23))  # every sample, in order
    assert [seq for batch in server.batches() for seq in batch] == list(range(1, 23))  # and each sent once
    assert len(pusher.spool) == 0 and pusher.last_error is None
    assert all(b == sorted(b) for b in server.batches())


def test_a_new_agent_on_the_same_state_dir_continues(server: IngestServer, make: Callable[..., Pusher]) -> None:
    server.stop()
    first = make(server.url)
    for _ in range(3):
        first.collect_once()
    assert not first.flush()
    first.close()

    server.start()
    second = make(server.url)
    assert second.seq == 3
    assert second.once()
    assert server.seqs == [1, 2, 3, 4]
    assert server.batches() == [[1, 2, 3, 4]]


def test_two_agents_cannot_share_a_state_dir(server: IngestServer, make: Callable[..., Pusher]) -> None:
    make(server.url)
    with pytest.raises(StateDirBusy):
        make(server.url)


def test_batches_hold_at_most_100_samples(server: IngestServer, make: Callable[..., Pusher]) -> None:
    pusher = make(server.url, backend=SimBackend(gpus=1, seed=0))
    for _ in range(250):
        pusher.collect_once()
    assert pusher.flush()
    assert [len(b) for b in server.batches()] == [100, 100, 50]
    assert server.seqs == list(range(1, 251))


def test_spool_bound_drops_the_oldest(server: IngestServer, make: Callable[..., Pusher]) -> None:
    server.stop()
    pusher = make(server.url, buffer_max_mb=0.02)  # room for a few samples only
    for _ in range(30):
        pusher.collect_once()
    assert 0 < len(pusher.spool) < 30 and pusher.spool.dropped == 30 - len(pusher.spool)
    server.start()
    assert pusher.flush()
    assert server.seqs == list(range(31 - len(server.seqs), 31))  # the newest survived, in order


# -- what the server answers ----------------------------------------------------------------------------------

def test_400_dead_letters_only_the_samples_the_server_names(server: IngestServer,
                                                            make: Callable[..., Pusher]) -> None:
    """Like the real server: a batch holding bad samples is refused whole, each bad one named by its index. The
    named ones go to the dead letters, each with the server's reason for it, and the rest are sent again at once."""
    pusher = make(server.url)
    bad = {2: "140 is above 100", 4: "-3 is below 0"}

    def respond(doc: dict[str, Any]) -> Reply | None:
        fields = {f"samples[{i}].gpus[0].gpu_util_pct": bad[s["seq"]]
                  for i, s in enumerate(doc["samples"]) if s["seq"] in bad}
        if not fields:
            return None
        return Reply(400, {"error": f"{len(fields)} invalid field(s): ...", "fields": fields})

    server.respond = respond
    for _ in range(5):
        pusher.collect_once()
    assert pusher.flush()  # nothing left to push
    assert server.batches() == [[1, 2, 3, 4, 5], [1, 3, 5]]  # the good ones went again in one push, in order
    assert server.seqs == [1, 3, 5]
    dead = dead_letters(pusher)
    assert [d["sample"]["seq"] for d in dead] == [2, 4]
    assert [d["status"] for d in dead] == [400, 400]
    # Each dead letter carries the server's words about that sample, not about its neighbours.
    assert dead[0]["reason"]["fields"] == {"samples[1].gpus[0].gpu_util_pct": "140 is above 100"}
    assert dead[1]["reason"]["fields"] == {"samples[3].gpus[0].gpu_util_pct": "-3 is below 0"}
    assert "140 is above 100" in dead[0]["reason"]["error"] and "-3" not in dead[0]["reason"]["error"]
    assert re.fullmatch(r"\d{4}-.*Z", dead[0]["dead_at"])

    assert pusher.once()
    assert server.seqs == [1, 3, 5, 6]


def test_samples_named_bad_are_not_dead_lettered_before_the_rest_is_stored(server: IngestServer,
                                                                           make: Callable[..., Pusher]) -> None:
    """The good rest of a refused batch meets a 5xx: every sample stays spooled, none is dead-lettered yet; once the
    server is back the rest is stored and only then does the named sample go to the dead letters."""
    pusher = make(server.url)
    server.script = [Reply(400, {"error": "...", "fields": {"samples[0].ts": "is not an ISO 8601 timestamp"}}),
                     Reply(503, {"error": "database unavailable"})]
    for _ in range(3):
        pusher.collect_once()
    assert not pusher.flush()
    assert len(pusher.spool) == 3 and dead_letters(pusher) == []
    assert pusher.flush()
    assert server.batches() == [[1, 2, 3], [2, 3], [2, 3]]
    assert server.seqs == [2, 3]
    assert [d["sample"]["seq"] for d in dead_letters(pusher)] == [1]


ENVELOPE_400 = {
    "too many samples (an older server)": Reply(400, {
        "error": "1 invalid field(s): samples: holds 5 samples; send at most 100 per request",
        "fields": {"samples": "holds 5 samples; send at most 100 per request"}}),
    "node": Reply(400, {"error": "1 invalid field(s): node: is required", "fields": {"node": "is required"}}),
    "endpoint": Reply(400, {"error": "1 invalid field(s): endpoint: 'x' is not an http:// or https:// URL",
                            "fields": {"endpoint": "'x' is not an http:// or https:// URL"}}),
    "models": Reply(400, {"error": "1 invalid field(s): models: must be a list", "fields": {"models": "must be a list"}}),
    "the body itself": Reply(400, {"error": "the body is not valid JSON: line 1", "fields": {}}),
    "an answer that is not JSON": Reply(400, raw=b"<html><body>400 Bad Request (from a proxy)</body></html>"),
    "no fields at all": Reply(400, {"error": "the gzip body is truncated"}),
    "an index beyond the batch": Reply(400, {"error": "samples[7].ts: bad", "fields": {"samples[7].ts": "bad"}}),
    "an absurd index": Reply(400, {"error": "samples[1e9]: bad", "fields": {"samples[99999999999999999999999]": "x",
                                                                            "samples[-1]": "x", "samples[0]x": "x"}}),
}


@pytest.mark.parametrize("reply", ENVELOPE_400.values(), ids=ENVELOPE_400.keys())
def test_400_naming_no_sample_keeps_every_sample_and_backs_off(server: IngestServer, make: Callable[..., Pusher],
                                                               ft: FakeTime, reply: Reply,
                                                               caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.DEBUG, logger="agents")
    pusher = make(server.url)
    # An agent that retried at once instead of backing off would loop here: 20 requests end that with a 500.
    server.respond = lambda doc: reply if len(server.requests) <= 20 else Reply(500, {"error": "retried at once"})
    for _ in range(5):
        pusher.collect_once()
    for _ in range(4):
        assert not pusher.flush()
        assert len(pusher.spool) == 5  # nothing dead-lettered, nothing dropped
        assert pusher.retry_at > ft.clock()  # and the next try waits
    assert not pusher.deadletter_path.exists()
    assert reply.said in (pusher.last_error or "")
    # What the server said is logged once, not once per retry.
    told = [r for r in caplog.records if reply.said in r.getMessage() and r.levelno >= logging.WARNING]
    assert len(told) == 1, [r.getMessage() for r in told]
    server.respond = None
    assert pusher.flush()
    assert server.seqs == [1, 2, 3, 4, 5] and not pusher.deadletter_path.exists()


def test_400_naming_no_sample_backs_off_exponentially(server: IngestServer, make: Callable[..., Pusher],
                                                      ft: FakeTime) -> None:
    server.respond = lambda doc: ENVELOPE_400["models"]
    pusher = make(server.url, interval_s=300)
    pusher.run(max_iterations=2)
    retries = ft.sleeps[:9]
    for k, delay in enumerate(retries):
        ceiling = min(60.0, 2.0**k)
        assert ceiling / 2 <= delay <= ceiling, (k, delay)
    assert len(pusher.spool) == 2 and not pusher.deadletter_path.exists()


def test_a_distinct_400_message_is_logged_again(server: IngestServer, make: Callable[..., Pusher],
                                                caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.DEBUG, logger="agents")
    pusher = make(server.url)
    pusher.collect_once()
    server.script = [ENVELOPE_400["models"], ENVELOPE_400["models"], ENVELOPE_400["node"], ENVELOPE_400["models"]]
    for _ in range(4):
        assert not pusher.flush()
    loud = [r.getMessage() for r in caplog.records if r.levelno >= logging.WARNING and "400" in r.getMessage()]
    assert len(loud) == 2
    assert "models: must be a list" in loud[0] and "node: is required" in loud[1]


def test_an_older_server_refusing_too_many_samples_gets_smaller_pushes(server: IngestServer,
                                                                       make: Callable[..., Pusher],
                                                                       ft: FakeTime) -> None:
    """A server before the 413 answers a push over its sample limit with 400 on `samples`: the agent keeps the
    backlog, backs off, and tries smaller pushes until they fit; nothing is dead-lettered."""

    def respond(doc: dict[str, Any]) -> Reply | None:
        n = len(doc["samples"])
        if n <= 30:
            return None
        return Reply(400, {"error": f"1 invalid field(s): samples: holds {n} samples; send at most 30 per request",
                           "fields": {"samples": f"holds {n} samples; send at most 30 per request"}})

    server.respond = respond
    pusher = make(server.url, backend=SimBackend(gpus=1, seed=0), interval_s=300)
    for _ in range(250):
        pusher.collect_once()
    pusher.run(max_iterations=2)  # the backlog goes in the 300 s before the next sample
    assert len(pusher.spool) == 0 and not pusher.deadletter_path.exists()
    assert server.seqs == list(range(1, 253))
    # The smaller size is kept for the rest of the backlog: a refusal or two, not one per push.
    assert sum(len(b) > 30 for b in server.batches()) <= 3


def test_413_splits_the_batch(server: IngestServer, make: Callable[..., Pusher]) -> None:
    server.respond = lambda doc: Reply(413, {"error": "too large"}) if len(doc["samples"]) > 2 else None
    pusher = make(server.url)
    for _ in range(5):
        pusher.collect_once()
    assert pusher.flush()
    assert server.batches() == [[1, 2, 3, 4, 5], [1, 2], [3, 4], [5]]
    assert server.seqs == [1, 2, 3, 4, 5]


def test_a_single_sample_too_large_goes_to_the_dead_letters(server: IngestServer,
                                                            make: Callable[..., Pusher]) -> None:
    server.respond = lambda doc: Reply(413, {"error": "too large"}) if 2 in [s["seq"] for s in doc["samples"]] \
        else None
    pusher = make(server.url)
    for _ in range(3):
        pusher.collect_once()
    assert pusher.flush()
    assert server.seqs == [1, 3]
    assert [d["sample"]["seq"] for d in dead_letters(pusher)] == [2]


def test_429_honours_retry_after(server: IngestServer, make: Callable[..., Pusher], ft: FakeTime) -> None:
    server.script = [Reply(429, {"error": "slow down"}, {"Retry-After": "0.05"})]
    pusher = make(server.url, interval_s=5)
    pusher.run(max_iterations=2)
    assert ft.sleeps[0] == pytest.approx(0.05)  # woke up for the retry, not for the next sample
    assert server.batches() == [[1], [1], [2]]
    assert server.seqs == [1, 2]


def test_5xx_backs_off_exponentially_with_jitter_up_to_60s(server: IngestServer, make: Callable[..., Pusher],
                                                           ft: FakeTime) -> None:
    server.respond = lambda doc: Reply(500, {"error": "boom"})
    pusher = make(server.url, interval_s=300)
    pusher.run(max_iterations=2)  # two samples 300 s apart, retries in between
    retries = ft.sleeps[:9]
    for k, delay in enumerate(retries):
        ceiling = min(60.0, 2.0**k)
        assert ceiling / 2 <= delay <= ceiling, (k, delay)
    assert len(set(retries)) == len(retries)  # jittered
    assert max(ft.sleeps) <= 60.0
    assert len(pusher.spool) == 2  # nothing lost
    server.respond = None
    assert pusher.flush() and server.seqs == [1, 2]


def test_503_retry_after_is_honoured(server: IngestServer, make: Callable[..., Pusher], ft: FakeTime) -> None:
    server.script = [Reply(503, {"error": "database unavailable"}, {"Retry-After": "5"})]
    pusher = make(server.url, interval_s=60)
    pusher.run(max_iterations=2)
    assert ft.sleeps[0] == pytest.approx(5.0)
    assert server.batches() == [[1], [1], [2]]


@pytest.mark.parametrize("status, words", [(401, "token is wrong"), (403, "belongs to another node")])
def test_auth_errors_keep_samples_and_say_why(server: IngestServer, make: Callable[..., Pusher], status: int,
                                              words: str, caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.DEBUG)
    server.script = [Reply(status, {"error": "nope"})]
    pusher = make(server.url)
    assert not pusher.once()
    assert words in (pusher.last_error or "")
    assert len(pusher.spool) == 1
    assert any(words in r.getMessage() and r.levelno == logging.ERROR for r in caplog.records)
    assert all(TOKEN not in r.getMessage() for r in caplog.records)
    assert pusher.once() and server.seqs == [1, 2]


# -- desired state --------------------------------------------------------------------------------------------

def test_desired_interval_is_applied_and_reported(server: IngestServer, make: Callable[..., Pusher],
                                                  ft: FakeTime) -> None:
    server.desired = {"interval_s": 2, "state": "draining", "power_limit_w": {}}
    pusher = make(server.url, interval_s=5)
    pusher.run(max_iterations=3)
    assert pusher.interval == 2 and pusher.state == "draining"
    assert ft.sleeps == [pytest.approx(5.0), pytest.approx(2.0)]  # the second wait already uses the new interval
    assert server.requests[0]["doc"]["applied"]["interval_s"] == 5
    assert server.requests[1]["doc"]["applied"]["interval_s"] == 2

    server.desired = {"interval_s": 10_000}
    assert pusher.once() and pusher.interval == 300
    server.desired = {"interval_s": 0}
    assert pusher.once() and pusher.interval == 1
    server.desired = {"interval_s": "fast"}
    assert pusher.once() and pusher.interval == 1  # nonsense is ignored


def test_desired_power_limits_are_applied_once_and_reported(server: IngestServer,
                                                            make: Callable[..., Pusher]) -> None:
    calls: list[tuple[int, float]] = []

    class Recording(SimBackend):
        def set_power_limit(self, index: int, watts: float) -> float | None:
            calls.append((index, watts))
            return super().set_power_limit(index, watts)

    server.desired = {"interval_s": 5, "power_limit_w": {"0": 300, "1": 5000, "7": 300, "x": 1, "0b": -3}}
    pusher = make(server.url, backend=Recording(gpus=2, seed=0))
    assert pusher.once()
    assert pusher.once()
    assert calls == [(0, 300.0), (1, 5000.0), (7, 300.0)]  # once per wish, not once per push
    applied = server.requests[1]["doc"]["applied"]
    assert applied == {"interval_s": 5, "power_limit_w": {"0": 300.0, "1": 700.0},  # clamped; GPU 7 does not exist
                       "power_asked_w": {"0": 300.0, "1": 5000.0}, "power_default_w": {"0": 700.0, "1": 700.0}}
    assert server.requests[1]["doc"]["samples"][0]["gpus"][0]["power_limit_w"] == 300.0


# -- the spool under the pusher -------------------------------------------------------------------------------

def test_an_unreadable_spool_line_is_dead_lettered(server: IngestServer, make: Callable[..., Pusher],
                                                   tmp_path: Path) -> None:
    spool = Spool(tmp_path / "state" / "spool")
    spool.append({"seq": 100})
    segment = sorted((tmp_path / "state" / "spool").glob("*.jsonl"))[-1]
    with open(segment, "ab") as f:
        f.write(b"{not json}\n")
    pusher = make(server.url)
    pusher.collect_once()
    assert pusher.flush()
    assert server.batches() == [[100], [1]]
    assert [d["sample"] for d in dead_letters(pusher)] == ["{not json}\n"]
