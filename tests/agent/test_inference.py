"""Scraping vLLM (current and old names) and SGLang /metrics: parsing, rates, interval percentiles, resets."""

from __future__ import annotations

import http.server
import json
import socket
import threading
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from agents.catalogue import INFERENCE_NAMES
from agents.collectors.inference import (
    InferenceMetrics,
    InferenceScraper,
    histogram_delta,
    parse_prometheus,
    quantile,
)

FIXTURES = Path(__file__).parent / "fixtures"
INF = float("inf")


def fixture(name: str) -> str:
    return (FIXTURES / name).read_text()


def scrape_pair(first: str, second: str, dt: float = 10.0) -> tuple[dict, dict]:
    m = InferenceMetrics()
    a = m.update(parse_prometheus(fixture(first)), 100.0)
    b = m.update(parse_prometheus(fixture(second)), 100.0 + dt)
    return a, b


# -- parser ---------------------------------------------------------------------------------------------------

def test_parser_reads_names_labels_values_and_skips_comments() -> None:
    text = (
        '# HELP x_total A counter.\n# TYPE x_total counter\n'
        'x_total{a="1",b="with \\"quote\\", comma and \\\\ slash"} 12.5\n'
        'plain 3\n'
        'with_ts{k="v"} 1e3 1764300000000\n'
        'nan_value NaN\n'
        'h_bucket{le="+Inf"} 4\n'
        'spaced { a = "1" , } 2\n'
        'broken{a="1" 7\n'
        '# EOF\n'
    )
    fams = parse_prometheus(text)
    assert fams["x_total"] == [({"a": "1", "b": 'with "quote", comma and \\ slash'}, 12.5)]
    assert fams["plain"] == [({}, 3.0)]
    assert fams["with_ts"] == [({"k": "v"}, 1000.0)]
    assert fams["nan_value"][0][1] != fams["nan_value"][0][1]  # NaN survives parsing; it is dropped later
    assert fams["h_bucket"] == [({"le": "+Inf"}, 4.0)]
    assert fams["spaced"] == [({"a": "1"}, 2.0)]
    assert "broken" not in fams and "broken{a" not in fams


def test_every_fixture_parses_into_known_families() -> None:
    for path in FIXTURES.glob("*.txt"):
        fams = parse_prometheus(path.read_text())
        assert any(name.startswith(("vllm:", "sglang:")) for name in fams), path.name


# -- percentile maths -----------------------------------------------------------------------------------------

def test_quantile_interpolates_inside_the_bucket() -> None:
    buckets = {0.1: 20.0, 0.25: 80.0, 0.5: 90.0, 0.75: 100.0, INF: 100.0}
    assert quantile(0.5, buckets) == pytest.approx(0.175)
    assert quantile(0.95, buckets) == pytest.approx(0.625)
    assert quantile(0.1, buckets) == pytest.approx(0.05)  # first bucket starts at 0


def test_quantile_edge_cases() -> None:
    assert quantile(0.5, {0.1: 0.0, INF: 0.0}) is None  # no requests in the interval
    assert quantile(0.5, {}) is None
    assert quantile(0.99, {1.0: 5.0, 2.0: 5.0, INF: 10.0}) == 2.0  # beyond the last bound: the last bound
    assert quantile(0.5, {0.0: 10.0, 1.0: 10.0, INF: 10.0}) == 0.0


def test_histogram_delta_merges_series_and_handles_resets_per_series() -> None:
    a = frozenset({("engine", "0")})
    b = frozenset({("engine", "1")})
    prev = {a: {1.0: 10.0, INF: 20.0}, b: {1.0: 5.0, INF: 5.0}}
    cur = {a: {1.0: 12.0, INF: 25.0}, b: {1.0: 1.0, INF: 2.0}}  # engine 1 restarted
    assert histogram_delta(prev, cur) == {1.0: 2.0 + 1.0, INF: 5.0 + 2.0}


# -- vLLM, current names --------------------------------------------------------------------------------------

def test_vllm_first_scrape_has_gauges_but_no_rates_or_percentiles() -> None:
    m = InferenceMetrics().update(parse_prometheus(fixture("vllm_v1_a.txt")), 0.0)
    assert set(m) == INFERENCE_NAMES
    assert m["requests_running"] == 5 and m["requests_waiting"] == 1
    assert m["kv_cache_usage_pct"] == pytest.approx(39.5)
    assert m["preemptions_total"] == 6
    for name in ("prompt_tokens_s", "generation_tokens_s", "ttft_p50_s", "ttft_p95_s", "itl_p50_s", "e2e_p95_s",
                 "queue_time_p95_s", "prefix_cache_hit_pct", "request_errors_s"):
        assert m[name] is None, name


def test_vllm_two_scrapes_give_exact_rates_and_interval_percentiles() -> None:
    _, m = scrape_pair("vllm_v1_a.txt", "vllm_v1_b.txt", dt=10.0)
    assert m["requests_running"] == 12 and m["requests_waiting"] == 40  # summed over both engines
    assert m["kv_cache_usage_pct"] == pytest.approx(81.5)  # averaged over both engines
    assert m["prompt_tokens_s"] == pytest.approx(1234.5)
    assert m["generation_tokens_s"] == pytest.approx(500.0)
    assert m["ttft_p50_s"] == pytest.approx(0.175)
    assert m["ttft_p95_s"] == pytest.approx(0.625)
    assert m["itl_p50_s"] == pytest.approx(0.03)
    assert m["e2e_p95_s"] == pytest.approx(3.75)
    assert m["queue_time_p95_s"] == pytest.approx(0.65)
    assert m["prefix_cache_hit_pct"] == pytest.approx(25.0)
    assert m["preemptions_total"] == 7
    # 4 aborts plus one "error" series that first appears in the second scrape (counted from 0).
    assert m["request_errors_s"] == pytest.approx(0.5)


def test_vllm_counter_reset_counts_from_zero() -> None:
    m = InferenceMetrics()
    m.update(parse_prometheus(fixture("vllm_v1_a.txt")), 0.0)
    m.update(parse_prometheus(fixture("vllm_v1_b.txt")), 10.0)
    r = m.update(parse_prometheus(fixture("vllm_v1_reset.txt")), 20.0)  # the server restarted in between
    assert r["prompt_tokens_s"] == pytest.approx(50.0)
    assert r["generation_tokens_s"] == pytest.approx(20.0)
    assert r["ttft_p50_s"] == pytest.approx(0.25 + 0.25 * 1 / 6)
    assert r["ttft_p95_s"] == pytest.approx(0.25 + 0.25 * 5.5 / 6)
    assert r["prefix_cache_hit_pct"] == pytest.approx(25.0)
    assert r["request_errors_s"] == pytest.approx(0.0)
    assert all(v is None or v >= 0 for v in r.values())


def test_no_requests_in_the_interval_gives_none_percentiles() -> None:
    _, m = scrape_pair("vllm_v1_b.txt", "vllm_v1_b.txt")
    assert m["ttft_p50_s"] is None and m["e2e_p95_s"] is None and m["queue_time_p95_s"] is None
    assert m["prompt_tokens_s"] == 0.0 and m["request_errors_s"] == 0.0
    assert m["prefix_cache_hit_pct"] is None  # no queries: no rate, rather than a made-up 0


# -- vLLM, old names ------------------------------------------------------------------------------------------

def test_old_vllm_names() -> None:
    first, m = scrape_pair("vllm_v0_a.txt", "vllm_v0_b.txt")
    assert first["prompt_tokens_s"] == 420.0  # the old throughput gauges need no second scrape
    assert first["ttft_p50_s"] is None
    assert m["requests_running"] == 9 and m["requests_waiting"] == 3
    assert m["kv_cache_usage_pct"] == pytest.approx(42.5)
    assert m["prompt_tokens_s"] == 850.5 and m["generation_tokens_s"] == 310.25
    assert m["prefix_cache_hit_pct"] == pytest.approx(12.5)
    assert m["ttft_p50_s"] == pytest.approx(0.25 + 0.25 * 2 / 3)
    assert m["ttft_p95_s"] == pytest.approx(0.7)
    assert m["itl_p50_s"] == pytest.approx(0.05)  # from time_per_output_token
    assert m["e2e_p95_s"] == pytest.approx(14.5)
    assert m["preemptions_total"] == 2
    assert m["queue_time_p95_s"] is None and m["request_errors_s"] is None  # not exposed by that version


def test_oldest_preemption_gauge_name() -> None:
    m = InferenceMetrics().update(parse_prometheus('vllm:num_preemptions{model_name="m"} 4\n'), 0.0)
    assert m["preemptions_total"] == 4


# -- SGLang ---------------------------------------------------------------------------------------------------

def test_sglang_names() -> None:
    first, m = scrape_pair("sglang_a.txt", "sglang_b.txt")
    assert first["ttft_p50_s"] is None and first["prompt_tokens_s"] is None
    assert m["requests_running"] == 48 and m["requests_waiting"] == 7
    assert m["kv_cache_usage_pct"] == pytest.approx(28.0)
    assert m["prefix_cache_hit_pct"] == pytest.approx(40.0)
    assert m["prompt_tokens_s"] == pytest.approx(2000.0)
    assert m["generation_tokens_s"] == pytest.approx(750.0)
    assert m["ttft_p50_s"] == pytest.approx(0.2)
    assert m["ttft_p95_s"] == pytest.approx(0.45)
    assert m["itl_p50_s"] == pytest.approx(0.015 + 0.005 / 3)
    assert m["e2e_p95_s"] == pytest.approx(14.0)
    assert m["queue_time_p95_s"] == pytest.approx(0.15)
    assert m["request_errors_s"] == pytest.approx(0.2)
    assert m["preemptions_total"] is None


# -- the scraper over HTTP ------------------------------------------------------------------------------------

class _MetricsServer:
    """A stand-in inference server on 127.0.0.1 serving a settable /metrics text and /v1/models."""

    def __init__(self) -> None:
        self.text = ""
        outer = self

        class Handler(http.server.BaseHTTPRequestHandler):
            def do_GET(self) -> None:
                if self.path == "/metrics":
                    body, ctype = outer.text.encode(), "text/plain; version=0.0.4"
                elif self.path == "/v1/models":
                    body = json.dumps({"object": "list", "data": [
                        {"id": "deepseek-ai/DeepSeek-R1", "object": "model", "owned_by": "vllm"}]}).encode()
                    ctype = "application/json"
                else:
                    self.send_error(404)
                    return
                self.send_response(200)
                self.send_header("Content-Type", ctype)
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, *args: object) -> None:
                pass

        self.httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.httpd.server_address[1]}"
        self.thread = threading.Thread(target=self.httpd.serve_forever, daemon=True)
        self.thread.start()

    def stop(self) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()


@pytest.fixture
def metrics_server() -> Iterator[_MetricsServer]:
    server = _MetricsServer()
    yield server
    server.stop()


def test_scraper_over_http(metrics_server: _MetricsServer) -> None:
    t = [0.0]
    scraper = InferenceScraper(metrics_server.url + "/", clock=lambda: t[0])
    metrics_server.text = fixture("vllm_v1_a.txt")
    assert scraper.collect()["ttft_p50_s"] is None
    metrics_server.text = fixture("vllm_v1_b.txt")
    t[0] = 10.0
    m = scraper.collect()
    assert m["ttft_p95_s"] == pytest.approx(0.625) and m["prompt_tokens_s"] == pytest.approx(1234.5)
    assert scraper.models() == ["deepseek-ai/DeepSeek-R1"]
    scraper.close()


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_unreachable_server_gives_all_none_and_logs_once(caplog: pytest.LogCaptureFixture) -> None:
    scraper = InferenceScraper(f"http://127.0.0.1:{free_port()}", timeout=1.0)
    for _ in range(3):
        m = scraper.collect()
        assert set(m) == INFERENCE_NAMES and all(v is None for v in m.values())
    assert len([r for r in caplog.records if "unreachable" in r.getMessage()]) == 1
    assert scraper.models() is None
    scraper.close()


def test_http_error_status_counts_as_unreachable() -> None:
    client = httpx.Client(transport=httpx.MockTransport(lambda request: httpx.Response(503)))
    m = InferenceScraper("http://inference.invalid", client=client).collect()
    assert all(v is None for v in m.values())
