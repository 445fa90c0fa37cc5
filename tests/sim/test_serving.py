"""The simulator honours a deployment: TP splits compute (with its communication cost), FP8 weights free memory
for the KV cache and decode faster, FP8 KV doubles the cache, max_model_len bounds requests; a restart through the
control API applies it and the node advertises what it runs."""

from __future__ import annotations

import time

import httpx
import pytest

from agents.sim import profiles
from agents.sim.background import BackgroundFleet
from agents.sim.serving import FP8_DECODE_SPEEDUP, Serving, ServingError, shape
from tests.sim.conftest import MODEL, chat

H100 = profiles.get("h100")


def test_tensor_parallel_divides_compute_with_a_communication_cost() -> None:
    full = shape(H100, Serving(MODEL, tensor_parallel_size=8, params_b=8), 8)
    half = shape(H100, Serving(MODEL, tensor_parallel_size=4, params_b=8), 8)
    one = shape(H100, Serving(MODEL, tensor_parallel_size=1, params_b=8), 8)
    assert full.decode_s == pytest.approx(H100.decode_s)  # the profile is TP over all GPUs
    # (1 + 0.05 x 3) / 4 over (1 + 0.05 x 7) / 8: half the GPUs is 1.70x slower, not 2x (less all-reduce).
    assert half.decode_s / full.decode_s == pytest.approx(1.7037, rel=1e-3)
    assert one.decode_s / full.decode_s == pytest.approx(5.9259, rel=1e-3)
    assert half.prefill_tps == pytest.approx(full.prefill_tps / 1.7037, rel=1e-3)


def test_fp8_weights_free_memory_for_kv_and_decode_faster() -> None:
    bf16 = shape(H100, Serving(MODEL, params_b=70), 8)
    fp8 = shape(H100, Serving(MODEL, params_b=70, quantization="fp8"), 8)
    assert fp8.weights_bytes == bf16.weights_bytes // 2
    assert fp8.kv_tokens > bf16.kv_tokens  # the halved weights became cache
    assert bf16.decode_s / fp8.decode_s == pytest.approx(FP8_DECODE_SPEEDUP)
    kv8 = shape(H100, Serving(MODEL, params_b=70, kv_cache_dtype="fp8"), 8)
    assert kv8.kv_tokens == pytest.approx(2 * bf16.kv_tokens, abs=2)


def test_a_deployment_that_cannot_run_is_refused() -> None:
    with pytest.raises(ServingError, match="TP 8 x PP 2 = 16 GPUs, but the node has 8"):
        shape(H100, Serving(MODEL, tensor_parallel_size=8, pipeline_parallel_size=2), 8)
    with pytest.raises(ServingError, match="leave no room for a KV cache"):
        shape(H100, Serving(MODEL, params_b=405, tensor_parallel_size=2), 8)


def wait_up(client: httpx.Client, api: str, name: str) -> dict[str, object]:
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        doc = client.get(f"{api}/nodes/{name}").json()
        if doc["state"] == "up":
            return doc
        time.sleep(0.05)
    raise AssertionError(f"{name} did not come back up")


def test_restart_applies_a_deployment_and_max_model_len_bounds_requests(client: httpx.Client) -> None:
    with BackgroundFleet(pool="t", model=MODEL, gpus=8, time_scale=20.0, seed=7, control_port=0) as fleet:
        api = fleet.control_url
        node = client.post(f"{api}/nodes", json={"name": "t-a"}).json()
        long_prompt = "word " * 2000  # ~2,500 tokens
        assert client.post(f"{node['url']}/v1/chat/completions", json=chat(long_prompt, max_tokens=8)).status_code \
            == 200
        entry = {"model": MODEL, "tensor_parallel_size": 4, "quantization": "fp8", "max_model_len": 2048,
                 "params_b": 70, "strategy": {"max_unavailable": 1}}  # policy keys the sim does not model: ignored
        restarted = client.post(f"{api}/nodes/t-a/restart", json={"serving": entry, "boot_delay_s": 0.2})
        assert restarted.status_code == 200 and restarted.json()["state"] == "booting"
        doc = wait_up(client, api, "t-a")
        assert doc["restarts"] == 1
        assert doc["serving"] == {"model": MODEL, "engine": "vllm", "tensor_parallel_size": 4,
                                  "pipeline_parallel_size": 1, "quantization": "fp8", "kv_cache_dtype": "auto",
                                  "max_model_len": 2048, "prefix_caching": True, "revision": None}
        too_long = client.post(f"{node['url']}/v1/chat/completions", json=chat(long_prompt, max_tokens=8))
        assert too_long.status_code == 400 and too_long.json()["error"]["code"] == "context_length_exceeded"
        assert "maximum context length is 2048" in too_long.json()["error"]["message"]
        # New nodes get what the last restart applied.
        added = client.post(f"{api}/nodes", json={"name": "t-b"}).json()
        assert client.get(f"{api}/nodes/{added['name']}").json()["serving"]["max_model_len"] == 2048
        assert client.get(f"{api}/serving").json()["serving"]["quantization"] == "fp8"


@pytest.mark.parametrize(("body", "status", "expected"), [
    ({"serving": {"model": MODEL, "tensor_parallel_size": 16}}, 400, "TP 16 x PP 1 = 16 GPUs, but the node has 2"),
    ({"serving": {"model": MODEL, "quantization": "int2"}}, 400, "serving.quantization must be one of"),
    ({"serving": {"model": ""}}, 400, "serving.model must be a model name"),
    ({"serving": {"model": MODEL, "max_model_len": "long"}}, 400, "serving.max_model_len must be a whole number"),
    ({"serving": [1]}, 400, "serving must be a JSON object"),
    ({"boot_delay_s": -1}, 400, "boot_delay_s must be 0-3600"),
    ({"colour": "red"}, 400, "unknown field(s) 'colour'"),
])
def test_restart_bad_input_changes_nothing(fleet: BackgroundFleet, client: httpx.Client, body: dict[str, object],
                                           status: int, expected: str) -> None:
    api = fleet.control_url
    client.post(f"{api}/nodes", json={"name": "t-a"})
    response = client.post(f"{api}/nodes/t-a/restart", json=body)
    assert response.status_code == status and expected in response.json()["error"], response.text
    doc = client.get(f"{api}/nodes/t-a").json()
    assert doc["state"] == "up" and doc["restarts"] == 0 and doc["serving"]["tensor_parallel_size"] == 2
    assert client.post(f"{api}/nodes/nope/restart", json={}).status_code == 404
