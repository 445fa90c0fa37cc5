"""A deployment policy entry applied to the pool's Kubernetes Deployment: the engine container's args (and image)
in the pod template, the rolling-update strategy from the entry's max_surge / max_unavailable, and the revision as
an annotation. The rollout is Kubernetes' own; `status` reads its progress the way `kubectl rollout status` does
(observedGeneration caught up, every replica updated and available; a Progressing=False condition with reason
ProgressDeadlineExceeded is a failure)."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from control.policy.deployment import engine_args
from control.providers.base import ProviderError, RolloutStatus

if TYPE_CHECKING:
    from control.providers.kubernetes.provider import KubernetesProvider

REVISION_ANNOTATION = "switchyard.io/deployment-revision"


def _container(dep: Any, name: str | None) -> Any:
    containers = list(dep.spec.template.spec.containers or [])
    if not containers:
        raise ProviderError("the Deployment's pod template has no container", permanent=True)
    if name is None:
        return containers[0]
    found = next((c for c in containers if c.name == name), None)
    if found is None:
        raise ProviderError(f"the Deployment's pod template has no container named {name!r} (it has "
                            f"{', '.join(c.name for c in containers)}); check the pool's provider config",
                            permanent=True)
    return found


def apply(p: KubernetesProvider, entry: dict[str, Any], revision: int | None) -> str:
    apps, _ = p._api()
    dep = p._call("read the deployment", apps.read_namespaced_deployment, p.deployment, p.namespace)
    target = _container(dep, getattr(p, "container", None))
    # Every container is sent, the engine's changed: a strategic merge (by name) and a plain merge patch (which
    # replaces the list) then give the same pod template.
    containers = []
    for c in dep.spec.template.spec.containers:
        doc: dict[str, Any] = {"name": c.name}
        if c.name == target.name:
            doc["args"] = engine_args(entry)
            if entry.get("image"):
                doc["image"] = entry["image"]
        containers.append(doc)
    strategy = entry["strategy"]
    note = {REVISION_ANNOTATION: str(revision or "")}
    patch = {"metadata": {"annotations": note},
             "spec": {"strategy": {"type": "RollingUpdate",
                                   "rollingUpdate": {"maxSurge": strategy["max_surge"],
                                                     "maxUnavailable": strategy["max_unavailable"]}},
                      "template": {"metadata": {"annotations": note}, "spec": {"containers": containers}}}}
    _, _, headers = p._call("update the deployment's pod template", apps.patch_namespaced_deployment_with_http_info,
                            p.deployment, p.namespace, patch)
    return str((headers or {}).get("Audit-Id") or f"k8s-revision-{revision}")


def status(p: KubernetesProvider) -> RolloutStatus:
    apps, _ = p._api()
    dep = p._call("read the deployment", apps.read_namespaced_deployment, p.deployment, p.namespace)
    st = dep.status
    want = int(dep.spec.replicas or 0)
    updated, available = int(st.updated_replicas or 0), int(st.available_replicas or 0)
    progress = f"{updated}/{want} updated, {available} available"
    for c in st.conditions or []:
        if c.type == "Progressing" and c.status == "False" and c.reason == "ProgressDeadlineExceeded":
            return RolloutStatus(False, f"Kubernetes gave up on the rollout: {c.message or c.reason} ({progress})",
                                 progress)
    caught_up = int(st.observed_generation or 0) >= int(dep.metadata.generation or 0)
    done = caught_up and updated == want and available == want and int(st.replicas or 0) == want
    return RolloutStatus(done, "", progress)
