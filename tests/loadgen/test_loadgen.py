"""loadgen against a real local HTTP server: what it sends, what it counts, and how it refuses bad flags."""

from __future__ import annotations

import asyncio
import json
import threading
from collections.abc import Iterator
from io import StringIO
from typing import Any

import pytest
import uvicorn
from django.core.management import CommandError, call_command

from control.loadgen import curves, report, runner
from control.loadgen.mix import parse_mix
from tests.conftest import free_port, wait_for_port

PREFILL_S = 0.2  # the test server's pause between the role chunk and the first token (slow-prefill class)


class Upstream:
    """An OpenAI-ish server: 429 for the `batch` class, SSE for stream requests, JSON otherwise."""

    def __init__(self) -> None:
        self.bodies: list[dict[str, Any]] = []
        self.headers: list[dict[str, str]] = []

    async def __call__(self, scope: dict[str, Any], receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            return
        raw = b""
        while True:
            msg = await receive()
            raw += msg.get("body", b"")
            if not msg.get("more_body"):
                break
        body = json.loads(raw)
        headers = {k.decode(): v.decode() for k, v in scope["headers"]}
        self.bodies.append(body)
        self.headers.append(headers)
        if headers.get("x-priority") == "batch":
            await send({"type": "http.response.start", "status": 429, "headers": [(b"retry-after", b"1")]})
            await send({"type": "http.response.body", "body": b'{"error": "saturated"}'})
            return
        node = [(b"x-switchyard-node", b"n-1"), (b"content-type", b"application/json")]
        if body.get("stream"):
            await send({"type": "http.response.start", "status": 200, "headers": node})
            if headers.get("x-priority") == "slow-prefill":  # the role first, the first token after a prefill
                role = {"choices": [{"delta": {"role": "assistant", "content": ""}}]}
                await send({"type": "http.response.body", "body": f"data: {json.dumps(role)}\n\n".encode(),
                            "more_body": True})
                await asyncio.sleep(PREFILL_S)
            for word in ("a", "b", "c"):
                chunk = {"choices": [{"delta": {"content": word}}]}
                await send({"type": "http.response.body", "body": f"data: {json.dumps(chunk)}\n\n".encode(),
                            "more_body": True})
            await send({"type": "http.response.body", "body": b"data: [DONE]\n\n"})
            return
        await send({"type": "http.response.start", "status": 200, "headers": node})
        await send({"type": "http.response.body",
                    "body": json.dumps({"choices": [{"message": {"content": "x y"}}],
                                        "usage": {"completion_tokens": 2}}).encode()})


@pytest.fixture
def upstream() -> Iterator[tuple[str, Upstream]]:
    app = Upstream()
    port = free_port()
    server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=port, log_level="warning", lifespan="off"))
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    wait_for_port(port)
    yield f"http://127.0.0.1:{port}", app
    server.should_exit = True
    thread.join(5)


def spec(url: str, **kw: Any) -> runner.LoadSpec:
    base: dict[str, Any] = dict(
        url=url, model="m", curve=curves.build(curves.CurveSpec(rate=200)), duration_s=0.5,
        prompt_tokens=parse_mix("8", int, "p"), max_tokens=parse_mix("4", int, "m"),
        classes=parse_mix("realtime:1,batch:1", str, "c"), stream_fraction=0.5, seed=7, token="tok-1")
    base.update(kw)
    return runner.LoadSpec(**base)


def test_counts_429s_per_class_and_measures_streams(upstream: tuple[str, Upstream]) -> None:
    url, app = upstream
    outs = asyncio.run(runner.run(spec(url)))
    assert len(outs) == len(app.bodies) > 30  # ~100 expected at 200 req/s for 0.5 s
    rows = {r.name: r for r in report.summarize(outs, 0.5, slo_s=10)}
    assert rows["batch"].ok == 0 and rows["batch"].shed_429 == rows["batch"].sent > 0
    assert rows["realtime"].ok == rows["realtime"].sent > 0 and rows["realtime"].shed_429 == 0
    streamed = [o for o in outs if o.cls == "realtime" and o.stream]
    assert streamed and all(o.completion_tokens == 3 and o.ttft_s is not None for o in streamed)
    assert all(o.completion_tokens == 2 for o in outs if o.cls == "realtime" and not o.stream)
    assert report.node_share(outs)["n-1"] == rows["realtime"].ok
    # What the server saw: the class header, the token, the model, a prompt, and distinct prompts (no cache hits).
    assert {h["x-priority"] for h in app.headers} == {"realtime", "batch"}
    assert all(h["authorization"] == "Bearer tok-1" for h in app.headers)
    prompts = [b["messages"][0]["content"] for b in app.bodies]
    assert len(set(prompts)) == len(prompts)


def test_more_urls_spread_the_requests_over_every_gateway_in_turn() -> None:
    """bench/prefix.py --gateways: one sequence spread over several gateways, as a round-robin balancer would."""
    apps, servers, urls = [], [], []
    for _ in range(2):
        app, port = Upstream(), free_port()
        server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=port, log_level="warning", lifespan="off"))
        threading.Thread(target=server.run, daemon=True).start()
        wait_for_port(port)
        apps.append(app), servers.append(server), urls.append(f"http://127.0.0.1:{port}")
    try:
        outs = asyncio.run(runner.run(spec(urls[0], more_urls=(urls[1],), classes=parse_mix("realtime", str, "c"))))
    finally:
        for server in servers:
            server.should_exit = True
    counts = [len(app.bodies) for app in apps]
    assert sum(counts) == len(outs) > 30 and abs(counts[0] - counts[1]) <= 1, counts
    assert not any(o.error for o in outs), {o.error for o in outs}


def test_ttft_is_the_first_generated_text_not_the_role_chunk(upstream: tuple[str, Upstream]) -> None:
    url, _ = upstream
    outs = asyncio.run(runner.run(spec(url, classes=parse_mix("slow-prefill", str, "c"), stream_fraction=1.0,
                                       duration_s=0.2)))
    assert outs and all(o.status == 200 and o.completion_tokens == 3 for o in outs)
    # The role-only chunk comes at once; the first token only after the server's prefill.
    assert all(o.ttft_s is not None and o.ttft_s >= PREFILL_S for o in outs)


def test_open_loop_does_not_wait_for_slow_answers(upstream: tuple[str, Upstream]) -> None:
    """A closed loop would send one request at a time against a server that never answers; an open loop keeps
    sending at the curve's rate and counts what it could not send."""
    import socket

    listener = socket.socket()
    listener.bind(("127.0.0.1", 0))
    listener.listen(1000)  # accepts (via the backlog) and never answers
    try:
        port = listener.getsockname()[1]
        outs = asyncio.run(runner.run(spec(f"http://127.0.0.1:{port}", timeout_s=0.3, max_outstanding=10,
                                           classes=parse_mix("realtime", str, "c"))))
    finally:
        listener.close()
    assert len(outs) > 30
    assert sum(1 for o in outs if o.error.startswith("client overloaded")) > 10
    assert all(o.status == 0 for o in outs)


def test_daily_curve_peaks_at_the_peak_hour() -> None:
    c = curves.build(curves.CurveSpec(kind="daily", rate=5, peak_rate=50, day_s=240))
    by_hour = {h: c(h * 10) for h in range(24)}  # 240 s per day -> 10 s per hour
    assert max(by_hour, key=by_hour.get) == 14
    assert by_hour[14] == pytest.approx(50, rel=0.05) and min(by_hour.values()) >= 5
    assert by_hour[4] < 10
    step = curves.build(curves.CurveSpec(kind="step", rate=2, step_rate=9, step_at_s=30))
    assert (step(29.9), step(30)) == (2, 9)


@pytest.mark.parametrize("text, message", [
    ("64:0.5,abc", "'abc' is not a valid int"),
    ("64:x", "weight 'x' is not a number"),
    ("0", "outside"),
    ("64,64", "appears twice"),
    ("64:-1", "must be above 0"),
    ("", "empty entry"),
])
def test_bad_mix_names_the_bad_part(text: str, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        parse_mix(text, int, "--prompt-tokens", 1, 100_000)


@pytest.mark.parametrize("args, message", [
    (["--curve", "daily", "--rate", "10", "--peak-rate", "5"], "--peak-rate (5) must be above --rate (10)"),
    (["--rate", "0"], "rate 0 must be above 0"),
    (["--curve", "step", "--rate", "1"], "a step curve needs --step-rate"),
    (["--stream-fraction", "2"], "--stream-fraction must be between 0 and 1"),
    (["--url", "ftp://x"], "must start with http:// or https://"),
    (["--prompt-tokens", "64:0.5,zz"], "--prompt-tokens: 'zz' is not a valid int"),
])
def test_command_refuses_bad_flags(args: list[str], message: str) -> None:
    with pytest.raises(CommandError, match=message.replace("(", r"\(").replace(")", r"\)")):
        call_command("loadgen", *args, "--duration", "1", "--no-progress")


def test_command_prints_the_summary_table(upstream: tuple[str, Upstream], tmp_path: Any) -> None:
    url, _ = upstream
    out = StringIO()
    call_command("loadgen", "--url", url, "--rate", "40", "--duration", "1", "--priority", "realtime:3,batch:1",
                 "--seed", "3", "--no-progress", "--json", str(tmp_path / "s.json"), stdout=out)
    text = out.getvalue()
    assert "class" in text and "realtime" in text and "batch" in text and "all" in text
    assert "requests per node: n-1" in text
    saved = json.loads((tmp_path / "s.json").read_text())
    by = {r["name"]: r for r in saved["rows"]}
    assert by["batch"]["shed_429"] == by["batch"]["sent"] and by["realtime"]["ok"] == by["realtime"]["sent"]


def test_command_says_when_nothing_answers() -> None:
    port = free_port()
    with pytest.raises(CommandError, match="is the gateway running"):
        call_command("loadgen", "--url", f"http://127.0.0.1:{port}", "--rate", "20", "--duration", "0.3",
                     "--no-progress", stdout=StringIO())
