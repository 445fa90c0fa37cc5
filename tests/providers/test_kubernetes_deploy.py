"""A deployment applied through the kubernetes provider (the real client) against the fake API server: the pod
template's container args and image, the rolling-update strategy, the revision annotation; the rollout's status as
`kubectl rollout status` reads it; and the controller's rollout of a pool on Kubernetes end to end."""

from __future__ import annotations

from typing import Any

import pytest
from django.utils import timezone

from control.controller import bindings, rollout
from control.controller.models import Rollout
from control.policy import service as policies
from control.policy.deployment import engine_args
from control.policy.schemas import validate
from core.audit.context import Origin
from core.audit.models import AuditEvent
from dashboard.fleet.models import Pool
from tests.providers.conftest import wait_until
from tests.providers.fakes.kubernetes import FakeKubernetes
from tests.providers.test_kubernetes import kube, provider, token_file  # noqa: F401  (fixtures)

ENTRY = {"model": "meta-llama/Llama-3.1-8B-Instruct", "params_b": 8, "tensor_parallel_size": 2,
         "quantization": "fp8", "max_model_len": 8192, "image": "vllm/vllm-openai:v0.6.3",
         "extra_args": ["--max-num-seqs", "128"], "gpus_per_node": 8, "gpu_memory_gb": 80,
         "strategy": {"max_surge": 1, "max_unavailable": 0, "drain_timeout_s": 30}}


def entry() -> dict[str, Any]:
    return validate("deployment", {"pools": {"k": ENTRY}})["pools"]["k"]


def test_apply_patches_the_pod_template_and_the_strategy(kube: FakeKubernetes) -> None:  # noqa: F811
    p = provider(kube)
    kube.ready_after_s = 1.0
    old_pods = set(kube.pod_names())
    rid = p.apply_deployment(entry(), 42)
    assert len(rid) == 36  # the API server's Audit-Id
    assert ("PATCH", "/apis/apps/v1/namespaces/gpu/deployments/vllm") in kube.requests
    [container] = kube.containers
    assert container["image"] == "vllm/vllm-openai:v0.6.3"
    assert container["args"] == engine_args(entry())
    assert container["args"][:4] == ["--model", "meta-llama/Llama-3.1-8B-Instruct", "--tensor-parallel-size", "2"]
    assert kube.strategy == {"type": "RollingUpdate", "rollingUpdate": {"maxSurge": 1, "maxUnavailable": 0}}
    assert kube.annotations["switchyard.io/deployment-revision"] == "42"
    assert kube.template_annotations["switchyard.io/deployment-revision"] == "42"
    # Kubernetes replaces the pods; the rollout is done once every new pod is available.
    assert not old_pods & set(kube.pod_names())
    first = p.deployment_status(rid)
    assert not first.done and first.progress == "2/2 updated, 0 available"
    wait_until(lambda: p.deployment_status(rid).done, what="the rollout to finish")
    assert p.deployment_status(rid).progress == "2/2 updated, 2 available"
    # The same entry again changes nothing: no new pods.
    pods = set(kube.pod_names())
    p.apply_deployment(entry(), 42)
    assert set(kube.pod_names()) == pods


def test_a_stuck_rollout_is_reported_failed(kube: FakeKubernetes) -> None:  # noqa: F811
    p = provider(kube)
    kube.rollout_fails = True
    rid = p.apply_deployment(entry(), 7)
    status = p.deployment_status(rid)
    assert not status.done and "ProgressDeadlineExceeded" not in status.failed
    assert "Kubernetes gave up on the rollout" in status.failed and "timed out progressing" in status.failed


def test_a_named_container_that_is_not_there_is_a_permanent_error(kube: FakeKubernetes) -> None:  # noqa: F811
    from tests.providers.conftest import provider_error

    err = provider_error(lambda: provider(kube, container="engine").apply_deployment(entry(), 1))
    assert err.permanent and "no container named 'engine' (it has vllm)" in err.message


@pytest.mark.django_db
def test_the_controller_rolls_a_pool_on_kubernetes_out_through_its_own_update(
        kube: FakeKubernetes) -> None:  # noqa: F811
    Pool.objects.create(name="k")
    bindings.set_provider("k", "kubernetes", {"namespace": "gpu", "deployment": "vllm", "api_url": kube.url}, True,
                          "test", Origin.system("test"))
    kube.ready_after_s = 0.5
    current = policies.active("deployment")
    rev = policies.create_revision("deployment", {"pools": {"k": ENTRY}}, "8B fp8", current.pk,
                                   Origin.system("operator")).revision
    rollout.reconcile(timezone.now())
    r = Rollout.objects.get()
    assert r.step == "restarting" and len(r.batches) == 1 and r.provider == "kubernetes"
    assert kube.annotations["switchyard.io/deployment-revision"] == str(rev.pk)
    wait_until(lambda: (rollout.reconcile(timezone.now()), Rollout.objects.get().state == "done")[1],
               what="the rollout to finish")
    done = Rollout.objects.get()
    assert done.progress == "2/2 updated, 2 available"
    actions = list(AuditEvent.objects.filter(action__startswith="deployment.").order_by("id")
                   .values_list("action", flat=True))
    assert actions == ["deployment.rollout", "deployment.apply", "deployment.batch.done", "deployment.rollout.done"]
