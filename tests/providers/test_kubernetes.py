"""The kubernetes provider (the real `kubernetes` client) against a local fake of the API server over HTTP."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from control.providers import registry
from control.providers.base import Size
from control.providers.kubernetes.provider import CA_FILE_ENV, TOKEN_FILE_ENV, KubernetesProvider
from tests.providers.conftest import closed_port_url, provider_error, wait_until, without_hanging
from tests.providers.fakes.azure import self_signed_cert
from tests.providers.fakes.kubernetes import DELETION_COST, FakeKubernetes

TOKEN = "sa-token-123"


@pytest.fixture
def token_file(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    path = tmp_path / "token"
    path.write_text(TOKEN + "\n")
    monkeypatch.setenv(TOKEN_FILE_ENV, str(path))
    monkeypatch.delenv(CA_FILE_ENV, raising=False)
    return path


@pytest.fixture
def kube(token_file: Path) -> Iterator[FakeKubernetes]:
    with FakeKubernetes(namespace="gpu", deployment="vllm", token=TOKEN, replicas=2) as fake:
        yield fake


def provider(kube: FakeKubernetes, **config: object) -> KubernetesProvider:
    p = registry.get("kubernetes", {"namespace": "gpu", "deployment": "vllm", "api_url": kube.url, **config})
    assert isinstance(p, KubernetesProvider)
    return p


def test_scale_up_and_actual_follows_the_ready_pods(kube: FakeKubernetes) -> None:
    p = provider(kube)
    assert p.current_size() == Size(2, 2)
    kube.ready_after_s = 2  # new pods take a while to pass their readiness probe (long enough on a loaded machine)
    rid = p.set_desired_size(4)
    assert len(rid) == 36  # the API server's Audit-Id
    assert kube.replicas == 4
    assert p.current_size() == Size(desired=4, actual=2)
    assert sorted(i.state for i in p.list_instances()) == ["pending", "pending", "ready", "ready"]
    wait_until(lambda: p.current_size() == Size(4, 4), what="four ready pods")
    assert [i.node for i in p.list_instances()] == kube.pod_names()  # a pod's name is its node name
    p.set_desired_size(4)  # the same size twice: harmless
    assert kube.replicas == 4 and len(kube.pods) == 4
    assert ("PATCH", "/apis/apps/v1/namespaces/gpu/deployments/vllm/scale") in kube.requests


def test_scale_down(kube: FakeKubernetes) -> None:
    p = provider(kube)
    p.set_desired_size(5)
    p.set_desired_size(1)
    assert kube.replicas == 1 and p.current_size() == Size(1, 1) and len(p.list_instances()) == 1
    p.set_desired_size(0)
    assert p.list_instances() == []


def test_remove_instance_removes_that_pod_and_lowers_replicas(kube: FakeKubernetes) -> None:
    p = provider(kube)
    p.set_desired_size(4)
    pods = kube.pod_names()
    target = pods[1]  # not the newest, which a plain scale-down would remove
    rid = p.remove_instance(target)
    assert "already-gone" not in rid
    assert kube.pod_names() == [pods[0], pods[2], pods[3]]
    assert kube.replicas == 3 and p.current_size() == Size(3, 3)
    assert ("PATCH", f"/api/v1/namespaces/gpu/pods/{target}") in kube.requests  # marked with the deletion cost
    again = p.remove_instance(target)
    assert again.startswith("k8s-already-gone-")
    assert kube.replicas == 3 and len(kube.pods) == 3  # nothing else removed


def test_the_fake_removes_the_lowest_deletion_cost_first(kube: FakeKubernetes) -> None:
    p = provider(kube)
    p.set_desired_size(3)
    first = kube.pod_names()[0]
    kube.pods[first].annotations[DELETION_COST] = "-5"
    p.set_desired_size(2)
    assert first not in kube.pod_names()


def test_a_pod_of_another_deployment_is_already_gone_and_nothing_changes(kube: FakeKubernetes) -> None:
    p = provider(kube)
    assert p.remove_instance("other-app-5c9d-00001").startswith("k8s-already-gone-")
    assert kube.replicas == 2 and len(kube.pods) == 2


def test_an_unknown_deployment_is_permanent_and_names_it(kube: FakeKubernetes) -> None:
    p = provider(kube, deployment="nope")
    for call in (p.current_size, lambda: p.set_desired_size(3), p.list_instances, lambda: p.remove_instance("x")):
        err = provider_error(call)
        assert err.permanent
        assert str(err).startswith("deployment 'nope' not found in namespace 'gpu' (404 deployments.apps \"nope\" "
                                   "not found); check the pool's provider config")


def test_forbidden_is_permanent_and_says_which_permissions(kube: FakeKubernetes) -> None:
    kube.fail(403, method="PATCH")
    p = provider(kube)
    assert p.current_size() == Size(2, 2)  # reading is allowed
    err = provider_error(lambda: p.set_desired_size(3))
    assert err.permanent
    assert "the Kubernetes API forbids the controller to scale to 3 for deployment 'vllm' in namespace 'gpu'" in str(err)
    assert "get and patch on deployments/scale" in str(err)
    assert kube.replicas == 2


def test_server_errors_and_throttling_are_errors_to_retry(kube: FakeKubernetes) -> None:
    p = provider(kube)
    for status in (500, 503, 429):
        kube.fail(status)
        err = provider_error(lambda: p.set_desired_size(3))
        assert not err.permanent and f"could not scale to 3 for deployment 'vllm' in namespace 'gpu' now ({status}" \
            in str(err)
        kube.heal()
    assert p.set_desired_size(3) and kube.replicas == 3  # works again once the server does


def test_a_wrong_token_is_permanent_and_names_the_token_file(kube: FakeKubernetes, token_file: Path) -> None:
    token_file.write_text("stale-token")
    err = provider_error(lambda: provider(kube).current_size())
    assert err.permanent
    assert str(err) == ("the Kubernetes API refused the credentials to read the deployment (401 Unauthorized); "
                        f"check {TOKEN_FILE_ENV} (or the kubeconfig)")


def test_the_token_file_is_reread_so_a_rotated_token_works(kube: FakeKubernetes, token_file: Path) -> None:
    p = provider(kube)
    assert p.current_size() == Size(2, 2)
    kube.token = "rotated"
    token_file.write_text("rotated")
    assert p.current_size() == Size(2, 2)


def test_an_unreadable_token_file_is_permanent(kube: FakeKubernetes, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(TOKEN_FILE_ENV, "/nonexistent/token")
    err = provider_error(lambda: provider(kube).current_size())
    assert err.permanent and str(err) == ("cannot read the Kubernetes token file /nonexistent/token "
                                          f"({TOKEN_FILE_ENV}): No such file or directory")


def test_the_api_server_down_is_an_error_to_retry(token_file: Path) -> None:
    url = closed_port_url()
    err = provider_error(lambda: KubernetesProvider("gpu", "vllm", api_url=url, timeout_s=1).set_desired_size(1))
    assert not err.permanent
    assert str(err) == f"cannot reach the Kubernetes API at {url} to scale to 1: connection refused or unreachable"


def test_a_hung_api_server_times_out(token_file: Path, silent_url: str) -> None:
    err = provider_error(lambda: without_hanging(
        KubernetesProvider("gpu", "vllm", api_url=silent_url, timeout_s=0.3).current_size))
    assert not err.permanent
    assert str(err) == f"cannot reach the Kubernetes API at {silent_url} to read the deployment: no answer within 0.3 s"


def test_https_with_the_ca_file(token_file: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    cert, key = self_signed_cert(tmp_path)
    with FakeKubernetes(namespace="gpu", deployment="vllm", token=TOKEN, replicas=1, tls=(cert, key)) as kube:
        assert kube.url.startswith("https://")
        err = provider_error(lambda: provider(kube).current_size())  # the system CAs do not know this server
        assert err.permanent and f"set {CA_FILE_ENV} to the API server's CA" in str(err)
        monkeypatch.setenv(CA_FILE_ENV, str(cert))
        assert provider(kube).current_size() == Size(1, 1)
        monkeypatch.setenv(CA_FILE_ENV, str(tmp_path / "nope.pem"))
        err = provider_error(lambda: provider(kube).current_size())
        assert err.permanent and str(err) == f"the Kubernetes CA file {tmp_path / 'nope.pem'} ({CA_FILE_ENV}) does not exist"


def test_no_api_url_and_no_kubeconfig_is_permanent(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.delenv("KUBERNETES_SERVICE_HOST", raising=False)
    monkeypatch.setenv("KUBECONFIG", str(tmp_path / "missing-kubeconfig"))
    err = provider_error(lambda: KubernetesProvider("gpu", "vllm").current_size())
    assert err.permanent and "no Kubernetes credentials" in str(err) and "KUBECONFIG" in str(err)


def test_a_kubeconfig_is_used_without_api_url(kube: FakeKubernetes, monkeypatch: pytest.MonkeyPatch,
                                              tmp_path: Path) -> None:
    kubeconfig = tmp_path / "config"
    kubeconfig.write_text(f"""apiVersion: v1
kind: Config
clusters: [{{name: fake, cluster: {{server: "{kube.url}"}}}}]
users: [{{name: ctl, user: {{token: "{TOKEN}"}}}}]
contexts: [{{name: fake, context: {{cluster: fake, user: ctl, namespace: gpu}}}}]
current-context: fake
""")
    monkeypatch.delenv("KUBERNETES_SERVICE_HOST", raising=False)
    monkeypatch.setenv("KUBECONFIG", str(kubeconfig))
    assert registry.get("kubernetes", {"namespace": "gpu", "deployment": "vllm"}).current_size() == Size(2, 2)


def test_config() -> None:
    assert registry.validate_config("kubernetes", {"namespace": "gpu", "deployment": "vllm"}) == {
        "namespace": "gpu", "deployment": "vllm", "node_names": "pod", "timeout_s": 10.0}
    with pytest.raises(registry.ConfigError) as info:
        registry.validate_config("kubernetes", {"namespace": "GPU_pods", "api_url": "k8s.local", "bearer_token": "x",
                                                "replicas": 3})
    assert info.value.fields == {
        "namespace": "must be a Kubernetes namespace name (lowercase letters, digits and '-', at most 63), got "
                     "'GPU_pods'",
        "deployment": "required: the Deployment's name",
        "api_url": "must be an http:// or https:// URL, got 'k8s.local'",
        "bearer_token": "looks like a secret: the pool's config is stored in the database and shown to operators, "
                        "so it must hold none; put the bearer token in a file and set SWITCHYARD_K8S_TOKEN_FILE "
                        "(and SWITCHYARD_K8S_CA_FILE for the API server's CA), or use KUBECONFIG",
        "replicas": "unknown key; allowed: namespace, deployment, api_url, node_names, container, timeout_s",
    }
    with pytest.raises(registry.ConfigError) as info:
        registry.validate_config("kubernetes", {"namespace": ["gpu"], "deployment": "vllm", "timeout_s": 500})
    assert info.value.fields == {"namespace": "must be a string, got ['gpu']",
                                 "timeout_s": "must be above 0 and at most 120 seconds, got 500"}


def test_with_node_names_node_each_instance_is_the_kubernetes_node_its_agent_reports(kube: FakeKubernetes) -> None:
    """deploy/kubernetes/ runs the agent as a DaemonSet, which reports the host's name (spec.nodeName): scale-in must
    find the node to drain by that name, and still remove exactly the pod on it."""
    p = provider(kube, node_names="node")
    p.set_desired_size(3)
    instances = {i.node: i.id for i in p.list_instances()}
    hosts = {pod.node: pod.name for pod in kube.pods.values()}
    assert instances == hosts and all(h.startswith("gpu-host-") for h in instances)
    victim_host = sorted(instances)[1]
    p.remove_instance(instances[victim_host])
    assert kube.replicas == 2 and victim_host not in {pod.node for pod in kube.pods.values()}
    assert [i.node for i in provider(kube).list_instances()] == kube.pod_names()  # the default: pod names


def test_node_names_must_be_pod_or_node() -> None:
    with pytest.raises(registry.ConfigError) as err:
        registry.validate_config("kubernetes", {"namespace": "gpu", "deployment": "vllm", "node_names": "host"})
    assert err.value.fields == {"node_names": "must be 'pod' or 'node', got 'host'"}
