"""The `deployment` policy kind: schema, extra_args checks, pool fit (GPUs per node, memory estimate with its
arithmetic in the error), roles, rollback, and that nothing refused is stored or audited."""

from __future__ import annotations

import copy
from collections.abc import Callable
from typing import Any

import pytest

from control.controller.models import PoolProvider
from control.policy.deployment import command, engine_args
from control.policy.models import ActivePolicy, PolicyRevision
from control.policy.schemas import validate
from core.audit.models import AuditEvent
from dashboard.fleet.models import GPU, Node, Pool
from dashboard.metrics.latest import store_latest
from tests.control.conftest import events_since, last_event_id

URL = "/api/v1/policies/deployment"
H100 = "NVIDIA H100 80GB HBM3"


def snapshot() -> tuple[int, int, list[tuple[str, int]]]:
    return (PolicyRevision.objects.count(), AuditEvent.objects.count(),
            sorted(ActivePolicy.objects.values_list("kind", "revision_id")))


def make_pool(name: str = "pool-a", nodes: int = 2, gpus: int = 8, gpu_name: str = H100,
              provider: str | None = "local") -> Pool:
    pool = Pool.objects.create(name=name)
    for i in range(nodes):
        node = Node.objects.create(name=f"{name}-{i}", pool=pool)
        for g in range(gpus):
            GPU.objects.create(node=node, index=g, name=gpu_name)
    if provider:
        PoolProvider.objects.create(pool=pool, kind=provider, config={})
    return pool


def entry(**over: Any) -> dict[str, Any]:
    base = {"engine": "vllm", "model": "meta-llama/Llama-3.1-70B-Instruct", "params_b": 70,
            "tensor_parallel_size": 4, "max_model_len": 16384}
    base.update(over)
    return base


def post(api: Callable[..., Any], pools: dict[str, Any], role: str = "operator") -> Any:
    current = api("viewer").get(f"{URL}/").json()
    return api(role).post(f"{URL}/revisions/", {"document": {"pools": pools}, "reason": "run llama",
                                               "parent": current["id"]}, format="json")


def refused(api: Callable[..., Any], pools: dict[str, Any]) -> dict[str, str]:
    """POST a document that must be refused: 400, nothing stored or audited; returns the fields."""
    before = snapshot()
    response = post(api, pools)
    assert response.status_code == 400, response.content
    assert snapshot() == before
    return response.json()["fields"]


def test_a_fitting_deployment_is_stored_active_and_audited(api: Callable[..., Any]) -> None:
    make_pool()
    mark = last_event_id()
    response = post(api, {"pool-a": entry()})
    assert response.status_code == 201, response.content
    stored = response.json()["document"]["pools"]["pool-a"]
    # Defaults filled in: the stored document is the whole configuration, not what happened to be sent.
    assert stored["strategy"] == {"max_surge": 1, "max_unavailable": 1, "drain_timeout_s": 300}
    assert stored["quantization"] is None and stored["kv_cache_dtype"] == "auto" and stored["prefix_caching"]
    assert api("viewer").get(f"{URL}/").json()["version"] == 2
    [event] = [e for e in events_since(mark) if e.target == "policy:deployment"]
    assert event.action == "policy.create" and event.actor == "operator"
    assert event.after["pools"]["pool-a"]["tensor_parallel_size"] == 4


def test_tensor_parallel_larger_than_a_node_names_the_field_and_the_counts(api: Callable[..., Any]) -> None:
    make_pool(gpus=8)
    fields = refused(api, {"pool-a": entry(tensor_parallel_size=16)})
    message = fields["pools['pool-a'].tensor_parallel_size"]
    assert "tensor_parallel_size 16 needs 16 GPUs in one node" in message
    assert "nodes have 8 GPUs each" in message


def test_pipeline_parallel_across_nodes_is_refused_naming_the_provider(api: Callable[..., Any]) -> None:
    make_pool(gpus=8, provider="kubernetes")
    fields = refused(api, {"pool-a": entry(tensor_parallel_size=4, pipeline_parallel_size=4, params_b=8)})
    message = fields["pools['pool-a'].pipeline_parallel_size"]
    assert "tensor_parallel_size 4 × pipeline_parallel_size 4 = 16 GPUs" in message
    assert "have 8 GPUs each" in message
    assert "not supported by its provider (the kubernetes provider" in message
    assert "use at most 2 stage(s) of TP 4" in message
    # Within one node, PP is fine.
    ok = post(api, {"pool-a": entry(tensor_parallel_size=4, pipeline_parallel_size=2, params_b=8)})
    assert ok.status_code == 201, ok.content


def test_a_model_too_big_for_memory_shows_the_arithmetic_and_fp8_makes_it_fit(api: Callable[..., Any]) -> None:
    make_pool(gpus=8)
    big = entry(model="meta-llama/Llama-3.1-405B-Instruct", params_b=405, tensor_parallel_size=8)
    message = refused(api, {"pool-a": big})["pools['pool-a'].model"]
    # 405 x 2 = 810 GB; / 8 = 101.2 GB a GPU; usable 80 x 0.9 = 72.0, reserve 10 % = 7.2.
    assert "405 B params × 2 bytes (bf16) = 810.0 GB of weights / (TP 8 × PP 1) = 101.2 GB per GPU" in message
    assert "+ KV reserve 7.2 GB (10% of usable) = 108.5 GB > 72.0 GB usable" in message
    assert "(80.0 GB NVIDIA H100 80GB HBM3 × gpu_memory_utilization 0.9)" in message
    assert "fp8 quantization halves the weights" in message
    # fp8: 405 GB / 8 = 50.6 GB + 7.2 GB = 57.8 GB <= 72 GB.
    ok = post(api, {"pool-a": {**big, "quantization": "fp8"}})
    assert ok.status_code == 201, ok.content


def test_the_memory_reported_in_the_latest_samples_wins_over_the_gpu_name(api: Callable[..., Any],
                                                                          redis_db: Any) -> None:
    make_pool(nodes=1, gpus=2, gpu_name="NVIDIA Mystery GPU")
    store_latest("pool-a-0", {"gpus": [{"index": 0, "fb_total_bytes": 48_000_000_000},
                                       {"index": 1, "fb_total_bytes": 48_000_000_000}]})
    message = refused(api, {"pool-a": entry(tensor_parallel_size=2)})["pools['pool-a'].model"]
    assert "= 70.0 GB per GPU" in message and "> 43.2 GB usable (48.0 GB" in message


def test_unknown_pool_and_a_pool_with_no_gpus_yet(api: Callable[..., Any]) -> None:
    fields = refused(api, {"nope": entry()})
    assert "no pool named 'nope'" in fields["pools.nope"]
    make_pool(name="empty", nodes=0)
    fields = refused(api, {"empty": entry()})
    assert "state gpus_per_node and gpu_memory_gb" in fields["pools.empty.gpus_per_node"]
    ok = post(api, {"empty": entry(gpus_per_node=8, gpu_memory_gb=80)})
    assert ok.status_code == 201, ok.content


@pytest.mark.parametrize(("args", "expected"), [
    (["--served-model-name", "x;rm"], "no whitespace or shell metacharacters"),
    (["--served-model-name", "$(id)"], "no whitespace or shell metacharacters"),
    (["--enforce-eager `reboot`"], "no whitespace or shell metacharacters"),
    (["--tensor-parallel-size", "2"], "--tensor-parallel-size is set by the field tensor_parallel_size"),
    (["--max-num-seqs", "many"], "--max-num-seqs must be a whole number, got 'many'"),
    (["--max-num-seqs=-4"], "--max-num-seqs must be 0 or more"),
    (["--max-num-seqs"], "--max-num-seqs needs a value"),
    (["--enforce-eager", "yes"], "--enforce-eager takes no value"),
    (["--block-size", "7"], "--block-size must be one of 8, 16, 32, 64, 128"),
    (["max-num-seqs", "3"], "is not a --flag"),
    (["--api-key", "sk-live-123"], "--api-key would put a credential in the policy"),
    (["--hf-token=hf_abc"], "--hf-token would put a credential in the policy"),
])
def test_extra_args_are_checked(api: Callable[..., Any], args: list[str], expected: str) -> None:
    make_pool()
    fields = refused(api, {"pool-a": entry(extra_args=args)})
    assert expected in fields["pools['pool-a'].extra_args"], fields


def test_good_extra_args_are_kept_and_rendered_after_the_policy_flags() -> None:
    doc = validate("deployment", {"pools": {"p": entry(
        quantization="fp8", kv_cache_dtype="fp8", prefix_caching=False,
        extra_args=["--max-num-seqs", "256", "--enforce-eager", "--some-new-flag", "x", "--dtype=bfloat16"])}})
    p = doc["pools"]["p"]
    assert engine_args(p) == [
        "--model", "meta-llama/Llama-3.1-70B-Instruct", "--tensor-parallel-size", "4",
        "--pipeline-parallel-size", "1", "--max-model-len", "16384", "--gpu-memory-utilization", "0.9",
        "--quantization", "fp8", "--kv-cache-dtype", "fp8", "--no-enable-prefix-caching",
        "--max-num-seqs", "256", "--enforce-eager", "--some-new-flag", "x", "--dtype=bfloat16"]
    sg = command({**p, "engine": "sglang", "extra_args": []})
    assert sg[:3] == ["python3", "-m", "sglang.launch_server"]
    assert sg[3:] == ["--model-path", "meta-llama/Llama-3.1-70B-Instruct", "--tp-size", "4", "--pp-size", "1",
                      "--context-length", "16384", "--mem-fraction-static", "0.9", "--quantization", "fp8",
                      "--kv-cache-dtype", "fp8_e5m2", "--disable-radix-cache"]


@pytest.mark.parametrize(("over", "path", "expected"), [
    ({"strategy": {"max_surge": 0, "max_unavailable": 0}}, "pools['pool-a'].strategy",
     "max_surge and max_unavailable are both 0"),
    ({"engine": "tgi"}, "pools['pool-a'].engine", "'vllm' or 'sglang'"),
    ({"tensor_parallel_size": 0}, "pools['pool-a'].tensor_parallel_size", "greater than or equal to 1"),
    ({"max_model_len": 10}, "pools['pool-a'].max_model_len", "greater than or equal to 256"),
    ({"gpu_memory_utilization": 1.5}, "pools['pool-a'].gpu_memory_utilization", "less than or equal to 0.99"),
    ({"quantization": "int3"}, "pools['pool-a'].quantization", "'fp8', 'awq' or 'gptq'"),
    ({"model": "a model; rm -rf /"}, "pools['pool-a'].model", "should match pattern"),
    ({"image": "vllm/vllm-openai:v0.6 && id"}, "pools['pool-a'].image", "should match pattern"),
    ({"params_b": -1}, "pools['pool-a'].params_b", "greater than 0"),
    ({"tp": 2}, "pools['pool-a'].tp", "Extra inputs are not permitted"),
])
def test_schema_errors_name_the_field(api: Callable[..., Any], over: dict[str, Any], path: str,
                                      expected: str) -> None:
    make_pool()
    fields = refused(api, {"pool-a": entry(**over)})
    assert expected in fields[path], fields


@pytest.mark.parametrize("role", [None, "viewer"])
def test_only_operators_change_it(api: Callable[..., Any], role: str | None) -> None:
    make_pool()
    before = snapshot()
    response = post(api, {"pool-a": entry()}, role=role) if role else api(None).post(
        f"{URL}/revisions/", {"document": {"pools": {}}, "reason": "r", "parent": 1}, format="json")
    assert response.status_code in (401, 403)
    assert snapshot() == before
    assert api("viewer").get(f"{URL}/").status_code == 200
    assert api(None).get(f"{URL}/").status_code in (401, 403)


def test_rollback_restores_the_previous_revision_even_if_the_pool_changed(api: Callable[..., Any]) -> None:
    make_pool()
    first = post(api, {"pool-a": entry()}).json()
    second = post(api, {"pool-a": entry(quantization="fp8")})
    assert second.status_code == 201
    # The pool loses GPUs: v2's TP 4 no longer fits, but rolling back to it must still work (the escape hatch).
    GPU.objects.filter(index__gte=2).delete()
    mark = last_event_id()
    back = api("operator").post(f"{URL}/rollback/", {"revision": first["id"], "reason": "fp8 hurt quality"},
                                format="json")
    assert back.status_code == 201, back.content
    assert back.json()["document"] == first["document"]
    assert [e.action for e in events_since(mark)] == ["policy.rollback"]


def test_the_editor_page_shows_the_fit_error(browser: Callable[..., Any]) -> None:
    import json

    from tests.control.conftest import csrf_post

    make_pool(gpus=4)
    client = browser("operator")
    page = client.get("/policies/deployment/")
    assert page.status_code == 200
    current = ActivePolicy.objects.get(kind="deployment").revision
    doc = json.dumps({"pools": {"pool-a": entry(tensor_parallel_size=8)}})
    before = snapshot()
    response = csrf_post(client, "/policies/deployment/", {"document": doc, "reason": "r", "parent": current.pk,
                                                           "action": "save"})
    assert response.status_code == 400
    assert "tensor_parallel_size 8 needs 8 GPUs in one node" in response.content.decode()
    assert snapshot() == before


def test_the_schema_default_is_an_empty_pool_map() -> None:
    assert validate("deployment", {}) == {"pools": {}}
    doc = copy.deepcopy(validate("deployment", {"pools": {"p": entry()}}))
    assert doc["pools"]["p"]["engine"] == "vllm"
