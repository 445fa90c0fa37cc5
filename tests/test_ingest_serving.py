"""The `serving` block of an ingest batch: kept in the node's latest snapshot (the gateway reads max_model_len from
it); a bad block is a 400 naming the field, with nothing stored."""

from __future__ import annotations

from typing import Any

import pytest

from dashboard.metrics.latest import latest
from tests.conftest import count, full_sample, make_node

pytestmark = pytest.mark.usefixtures("clean_samples")

SERVING = {"model": "llama-70b", "engine": "vllm", "tensor_parallel_size": 4, "pipeline_parallel_size": 1,
           "quantization": "fp8", "kv_cache_dtype": "fp8", "max_model_len": 8192, "prefix_caching": True,
           "revision": 3}


def test_the_serving_block_reaches_the_latest_snapshot(push: Any) -> None:
    token = make_node()
    response = push(token, {"node": "gpu-a-1", "serving": {**SERVING, "future_key": 1}, "samples": [full_sample(1)]})
    assert response.status_code == 200, response.content
    assert latest("gpu-a-1")["serving"] == SERVING  # unknown keys dropped, the rest as sent


@pytest.mark.parametrize(("serving", "path"), [
    ("fp8", "serving"),
    ({**SERVING, "max_model_len": -5}, "serving.max_model_len"),
    ({**SERVING, "max_model_len": True}, "serving.max_model_len"),
    ({**SERVING, "quantization": "int1"}, "serving.quantization"),
    ({**SERVING, "model": ""}, "serving.model"),
    ({**SERVING, "prefix_caching": "yes"}, "serving.prefix_caching"),
])
def test_a_bad_serving_block_is_refused_and_nothing_stored(push: Any, serving: Any, path: str) -> None:
    token = make_node()
    response = push(token, {"node": "gpu-a-1", "serving": serving, "samples": [full_sample(1)]})
    assert response.status_code == 400, response.content
    assert path in response.json()["fields"]
    assert count("node_sample") == 0 and latest("gpu-a-1") is None
