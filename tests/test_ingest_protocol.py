"""The ingest protocol (dashboard/fleet/ingest_protocol.py) answers agent pushes exactly as the ASGI path does.

Two real uvicorn servers in this process, one with the ingest protocol (what `manage.py serve` runs) and one with
uvicorn's own httptools protocol (every request through ASGI), get the same conversations over raw sockets: the
replies must match byte for byte but for the date and the request id.
"""

from __future__ import annotations

import gzip
import io
import json
import re
import socket
import threading
from collections.abc import Callable, Iterator
from typing import Any

import pytest

from dashboard.fleet import ingest_protocol
from dashboard.fleet.group_commit import committer
from tests.conftest import count, free_port, full_sample, make_node, wait_for_port

pytestmark = pytest.mark.usefixtures("clean_samples")

Response = tuple[int, list[tuple[str, str]], bytes]


def _server(http: Any) -> Iterator[int]:
    import uvicorn

    from dashboard.asgi import application

    port = free_port()
    server = uvicorn.Server(uvicorn.Config(application, host="127.0.0.1", port=port, lifespan="off",
                                           log_level="warning", http=http, timeout_keep_alive=75))
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    wait_for_port(port)
    yield port
    server.should_exit = True
    thread.join(15)


@pytest.fixture
def servers() -> Iterator[dict[str, int]]:
    """{"direct": port of a server with the ingest protocol, "asgi": port of one with uvicorn's httptools}."""
    direct = _server(ingest_protocol.IngestProtocol)
    asgi = _server("httptools")
    yield {"direct": next(direct), "asgi": next(asgi)}
    for gen in (direct, asgi):
        next(gen, None)


class Conn:
    """One kept-alive HTTP/1.1 connection over a raw socket, reading each response by its Content-Length."""

    def __init__(self, port: int) -> None:
        self.sock = socket.create_connection(("127.0.0.1", port), timeout=30)
        self.buf = b""

    def send(self, head: str, body: bytes = b"") -> None:
        self.sock.sendall(head.encode() + b"\r\n" + body)

    def read(self) -> Response | None:
        """The next response, or None when the server closed the connection instead."""
        while b"\r\n\r\n" not in self.buf:
            chunk = self.sock.recv(65536)
            if not chunk:
                return None
            self.buf += chunk
        head, self.buf = self.buf.split(b"\r\n\r\n", 1)
        lines = head.decode("latin-1").split("\r\n")
        status = int(lines[0].split(" ")[1])
        headers = [(k.lower(), v.strip()) for k, v in (line.split(":", 1) for line in lines[1:])]
        length = int(dict(headers)["content-length"])
        while len(self.buf) < length:
            chunk = self.sock.recv(65536)
            assert chunk, "the connection closed in the middle of a response"
            self.buf += chunk
        body, self.buf = self.buf[:length], self.buf[length:]
        return status, headers, body

    def closed(self) -> bool:
        """True when the server has closed the connection (after any response already read)."""
        try:
            return self.buf == b"" and self.sock.recv(1) == b""
        except ConnectionResetError:
            return True

    def close(self) -> None:
        self.sock.close()


def post(token: str | None, payload: bytes, *, declared: int | None = None, extra: str = "",
         path: str = "/api/v1/ingest") -> tuple[str, bytes]:
    auth = f"Authorization: Bearer {token}\r\n" if token is not None else ""
    length = len(payload) if declared is None else declared
    return (f"POST {path} HTTP/1.1\r\nHost: 127.0.0.1\r\n{auth}Content-Type: application/json\r\n"
            f"Content-Length: {length}\r\n{extra}"), payload


def doc(node: str, seq: int, **extra: Any) -> bytes:
    return json.dumps({"node": node, "agent": "switchyard-agent/1.0", "samples": [full_sample(seq)], **extra}).encode()


def normalised(resp: Response | None, node: str) -> Any:
    """The response with what differs by nature between two servers blanked: the date, the request id (checked to
    be one), and the node's name (each server gets its own node)."""
    if resp is None:
        return None
    status, headers, body = resp
    out = []
    for k, v in headers:
        if k == "date":
            v = "<date>"
        elif k == "x-request-id":
            assert re.fullmatch(r"[0-9a-f]{32}", v), v
            v = "<id>"
        out.append((k, v))
    return status, out, body.replace(node.encode(), b"<node>")


def conversation(port: int, node: str, token: str) -> list[Any]:
    """The conversation both servers get: every kind of push an agent (or a hostile client) sends, several on one
    kept-alive connection, a non-ingest request in between, and the ones answered before their body."""
    out: list[Any] = []
    c = Conn(port)

    def ask(head: str, payload: bytes = b"") -> None:
        c.send(head, payload)
        out.append(normalised(c.read(), node))

    ask(*post(token, doc(node, 1)))  # the token is not cached yet: the ASGI path looks it up
    second = doc(node, 2)
    ask(*post(token, second))  # cached: a direct push
    ask(*post(token, second))  # a replay: accepted 0, duplicates 1
    ask(*post(token, b"{not json"))
    ask(*post(token, json.dumps({"node": node, "samples": [{**full_sample(3), "seq": -1}]}).encode()))
    ask(*post(token, doc("someone-else", 4)))  # 403: the token's node is another
    ask(*post(token, gzip.compress(doc(node, 5)), extra="Content-Encoding: gzip\r\n"))
    ask(*post(token, b"\x1f\x8b not gzip", extra="Content-Encoding: gzip\r\n"))
    ask(*post(token, doc(node, 6), extra="Content-Encoding: br\r\n"))
    ask("GET /healthz HTTP/1.1\r\nHost: 127.0.0.1\r\n")  # not ingest, on the same connection
    ask(*post(token, doc(node, 7), path="/api/v1/ingest/"))
    ask(*post("sy_node_not-a-real-token", doc(node, 8)))  # 401 before the body, the connection closed
    out.append(c.closed())
    c.close()

    c = Conn(port)
    ask(*post(token, b"", declared=5 * 1024 * 1024))  # 413 from the headers alone: the body is never sent
    out.append(c.closed())
    c.close()

    c = Conn(port)
    ask(*post(token, doc(node, 9), extra="Connection: close\r\n"))  # answered, then the connection ends
    out.append(c.closed())
    c.close()
    return out


def test_the_ingest_protocol_answers_every_push_as_the_asgi_path_does(servers: dict[str, int]) -> None:
    before = ingest_protocol.direct_replies
    seen = {}
    for kind, port in servers.items():
        node = f"node-{kind[:4]}"  # names of one length: the replies quote them
        seen[kind] = conversation(port, node, make_node(node))
    assert seen["direct"] == seen["asgi"]
    statuses = [r[0] for r in seen["direct"] if isinstance(r, tuple)]
    assert statuses == [200, 200, 200, 400, 400, 403, 200, 400, 415, 200, 200, 401, 413, 200]
    replay = json.loads(seen["direct"][2][2])
    assert (replay["accepted"], replay["duplicates"]) == (0, 1)
    assert seen["direct"][-1] is True and seen["direct"][-3] is True and seen["direct"][-5] is True
    # Samples 1, 2, 5, 7 and 9 of each node stored, once each.
    assert count("node_sample") == 10
    # The direct path answered the cached pushes (all but the first, the healthz and the 401): it did run.
    assert ingest_protocol.direct_replies - before == 11


def _rate_blanked(resp: Any) -> Any:
    """Retry-After counts down with the clock: keep that it is there, not its value."""
    if not isinstance(resp, tuple):
        return resp
    status, headers, body = resp
    headers = [(k, "<s>" if k == "retry-after" else v) for k, v in headers]
    return status, headers, re.sub(rb"retry in \d+ s", b"retry in <s> s", body)


def _rate_conversation(port: int, node: str) -> list[Any]:
    token = make_node(node)
    c = Conn(port)
    out: list[Any] = []
    for seq in range(1, 4):  # three taken, each counted by its group's round trip
        c.send(*post(token, doc(node, seq)))
        out.append(_rate_blanked(normalised(c.read(), node)))
    # The fourth is refused from the last count before its body (which it never sends), and the connection ends.
    c.send(*post(token, b"", declared=2000))
    out.append(_rate_blanked(normalised(c.read(), node)))
    out.append(c.closed())
    c.close()
    return out


def test_rate_limit_refusals_match_the_asgi_path(servers: dict[str, int], settings: Any) -> None:
    import time

    settings.INGEST_RATE_PER_MINUTE = 3
    before = ingest_protocol.direct_replies
    for attempt in range(3):  # the limit counts per clock minute: a conversation across a minute's end is redone
        minute = int(time.time() // 60)
        seen = {kind: _rate_conversation(port, f"rate-{attempt}-{kind[:4]}") for kind, port in servers.items()}
        if int(time.time() // 60) == minute:
            break
    assert seen["direct"] == seen["asgi"]
    assert [r[0] for r in seen["direct"][:-1]] == [200, 200, 200, 429]
    assert ("connection", "close") in seen["direct"][3][1] and seen["direct"][-1] is True
    assert ingest_protocol.direct_replies - before >= 3  # pushes 2 and 3 and the refusal took the direct path


def test_a_direct_push_is_answered_only_after_its_commit(servers: dict[str, int]) -> None:
    token = make_node("held")
    c = Conn(servers["direct"])
    c.send(*post(token, doc("held", 1)))
    assert c.read()[0] == 200  # caches the token
    before = ingest_protocol.direct_replies
    with committer.hold():
        c.send(*post(token, doc("held", 2)))
        _wait(lambda: committer.waiting == 1, "the push queued for the committer")
        c.sock.settimeout(0.2)
        with pytest.raises(TimeoutError):
            c.sock.recv(1)  # nothing answered while the commit is held
        c.sock.settimeout(30)
        assert count("node_sample") == 1
    resp = c.read()
    assert resp is not None and resp[0] == 200 and json.loads(resp[2])["accepted"] == 1
    assert count("node_sample") == 2 and ingest_protocol.direct_replies == before + 1
    c.close()


def test_pipelined_requests_behind_a_direct_push_are_answered_in_order(servers: dict[str, int]) -> None:
    token = make_node("piped")
    c = Conn(servers["direct"])
    c.send(*post(token, doc("piped", 1)))
    assert c.read()[0] == 200
    before = ingest_protocol.direct_replies
    head1, body1 = post(token, doc("piped", 2))
    head2, body2 = post(token, doc("piped", 3))
    # Three requests in one write: a direct push, a push and a health check queued behind it on the ASGI path.
    c.sock.sendall(head1.encode() + b"\r\n" + body1 + head2.encode() + b"\r\n" + body2
                   + b"GET /healthz HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n")
    answers = [c.read() for _ in range(3)]
    assert [a[0] for a in answers if a] == [200, 200, 200]
    assert json.loads(answers[2][2]) == {"status": "ok"}
    assert count("node_sample") == 3
    assert ingest_protocol.direct_replies == before + 1  # the first; the two behind it took the ASGI path
    c.close()


def _wait(cond: Callable[[], bool], what: str, timeout: float = 30) -> None:
    import time

    deadline = time.monotonic() + timeout
    while not cond():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.01)


def test_serve_runs_the_ingest_protocol_unless_told_otherwise(monkeypatch: pytest.MonkeyPatch) -> None:
    import uvicorn
    from django.core.management import call_command

    from dashboard.fleet.management.commands import serve

    calls: list[dict[str, Any]] = []
    monkeypatch.setattr(uvicorn, "run", lambda app, **kw: calls.append(kw))
    out = io.StringIO()
    call_command("serve", "--port", "8123", stdout=out)
    call_command("serve", "--http", "httptools", stdout=out)
    assert calls[0]["http"] == serve.HTTP_PROTOCOLS["ingest"]
    module, _, cls = calls[0]["http"].partition(":")
    assert getattr(__import__(module, fromlist=[cls]), cls) is ingest_protocol.IngestProtocol
    assert calls[1]["http"] == "httptools"
