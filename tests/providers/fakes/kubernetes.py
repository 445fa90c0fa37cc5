"""A small fake of the Kubernetes API server for tests and demos: exactly the endpoints the provider uses.

    GET/PATCH /apis/apps/v1/namespaces/{ns}/deployments/{name}/scale
    GET/PATCH /apis/apps/v1/namespaces/{ns}/deployments/{name}   (PATCH: annotations, strategy, pod template;
                                                                   containers merged by name)
    GET       /api/v1/namespaces/{ns}/pods?labelSelector=k=v,...
    PATCH     /api/v1/namespaces/{ns}/pods/{pod}          (metadata.annotations merge)

One Deployment whose replicas and pods live in memory. Scaling down removes pods the way a ReplicaSet does:
not-ready pods first, then the lowest `controller.kubernetes.io/pod-deletion-cost`, then the newest. Requests need
`Authorization: Bearer <token>`; `fail(status)` makes every request (or those matching) answer with that status.
With `tls=(cert, key)` it serves HTTPS (tests.providers.fakes.azure.self_signed_cert makes a throwaway pair).

    with FakeKubernetes(namespace="gpu", deployment="vllm", token="t") as kube:
        kube.url  # http://127.0.0.1:<free port>
"""

from __future__ import annotations

import itertools
import json
import re
import threading
import time
import uuid
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, urlsplit

from tests.providers.fakes.server import FakeServer

DELETION_COST = "controller.kubernetes.io/pod-deletion-cost"
REASONS = {400: "BadRequest", 401: "Unauthorized", 403: "Forbidden", 404: "NotFound", 409: "Conflict",
           422: "Invalid", 429: "TooManyRequests", 500: "InternalError", 503: "ServiceUnavailable"}
DEPLOYMENT = re.compile(r"^/apis/apps/v1/namespaces/([^/]+)/deployments/([^/]+)(/scale)?$")
PODS = re.compile(r"^/api/v1/namespaces/([^/]+)/pods(?:/([^/]+))?$")


@dataclass
class FakePod:
    name: str
    labels: dict[str, str]
    created: float
    ready_at: float
    annotations: dict[str, str] = field(default_factory=dict)
    node: str = "gpu-host-1"  # the Kubernetes node it is scheduled on (spec.nodeName)
    template: int = 0  # the pod template generation it was made from

    @property
    def ready(self) -> bool:
        return time.monotonic() >= self.ready_at

    def cost(self) -> int:
        try:
            return int(self.annotations.get(DELETION_COST, "0"))
        except ValueError:
            return 0


@dataclass
class Failure:
    status: int
    method: str | None
    path_contains: str | None

    def matches(self, method: str, path: str) -> bool:
        return (self.method is None or self.method == method) and (
            self.path_contains is None or self.path_contains in path)


class HttpError(Exception):
    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status


class FakeKubernetes(FakeServer):
    name = "fake-kubernetes"

    def __init__(self, namespace: str = "default", deployment: str = "vllm", token: str = "test-token",
                 replicas: int = 0, labels: dict[str, str] | None = None, ready_after_s: float = 0.0,
                 tls: tuple[Path, Path] | None = None) -> None:
        self.tls = tls  # (certificate, key) PEM files to serve HTTPS with; plain HTTP without
        self.namespace = namespace
        self.deployment = deployment
        self.token = token
        self.labels = labels or {"app": deployment}
        self.ready_after_s = ready_after_s
        self.replicas = 0
        self.pods: dict[str, FakePod] = {}
        self.failures: list[Failure] = []
        self.requests: list[tuple[str, str]] = []  # (method, path) of every request, for assertions
        self._serial = itertools.count(1)
        self._lock = threading.Lock()
        # The pod template and the rolling update: a template change replaces every pod with a new one (made
        # from the new template, ready after ready_after_s); with rollout_fails the new pods never get ready and
        # the Deployment reports ProgressDeadlineExceeded.
        self.generation = 1
        self.template = 0
        self.annotations: dict[str, str] = {}
        self.template_annotations: dict[str, str] = {}
        self.containers: list[dict[str, Any]] = [{"name": "vllm", "image": "vllm/vllm-openai"}]
        self.strategy: dict[str, Any] = {"type": "RollingUpdate",
                                         "rollingUpdate": {"maxSurge": "25%", "maxUnavailable": "25%"}}
        self.rollout_fails = False
        self._scale_to(replicas)

    # -- test controls --------------------------------------------------------------------------------------

    def fail(self, status: int, method: str | None = None, path_contains: str | None = None) -> None:
        """Answer matching requests with `status` (a Kubernetes Status object) until `heal()`."""
        with self._lock:
            self.failures.append(Failure(status, method, path_contains))

    def heal(self) -> None:
        with self._lock:
            self.failures.clear()

    def pod_names(self) -> list[str]:
        with self._lock:
            return list(self.pods)

    # -- the model ------------------------------------------------------------------------------------------

    def _scale_to(self, replicas: int) -> None:
        self.replicas = replicas
        while len(self.pods) < replicas:
            serial = next(self._serial)
            name = f"{self.deployment}-6d8f7b9c4-{serial:05d}"
            now = time.monotonic()
            # One inference pod per GPU host, as the scheduler places them with a whole node's GPUs requested.
            ready_at = float("inf") if self.template and self.rollout_fails else now + self.ready_after_s
            self.pods[name] = FakePod(name, dict(self.labels), now, ready_at, node=f"gpu-host-{serial}",
                                      template=self.template)
        if len(self.pods) > replicas:
            # A ReplicaSet's order: not ready before ready, lower deletion cost first, newer first.
            ranked = sorted(self.pods.values(), key=lambda p: (p.ready, p.cost(), -p.created))
            for pod in ranked[:len(self.pods) - replicas]:
                del self.pods[pod.name]

    def _selector(self) -> str:
        return ",".join(f"{k}={v}" for k, v in self.labels.items())

    def _meta(self, name: str) -> dict[str, Any]:
        return {"name": name, "namespace": self.namespace, "uid": str(uuid.uuid5(uuid.NAMESPACE_URL, name))}

    def _scale_doc(self) -> dict[str, Any]:
        return {"kind": "Scale", "apiVersion": "autoscaling/v1", "metadata": self._meta(self.deployment),
                "spec": {"replicas": self.replicas}, "status": {"replicas": len(self.pods),
                                                                "selector": self._selector()}}

    def _deployment_doc(self) -> dict[str, Any]:
        ready = sum(1 for p in self.pods.values() if p.ready)
        updated = sum(1 for p in self.pods.values() if p.template == self.template)
        conditions = [{"type": "Progressing", "status": "False", "reason": "ProgressDeadlineExceeded",
                       "message": f'ReplicaSet "{self.deployment}-{self.template}" has timed out progressing.'}] \
            if self.rollout_fails and self.template else []
        return {"kind": "Deployment", "apiVersion": "apps/v1",
                "metadata": {**self._meta(self.deployment), "generation": self.generation,
                             "annotations": dict(self.annotations)},
                "spec": {"replicas": self.replicas, "selector": {"matchLabels": dict(self.labels)},
                         "strategy": self.strategy,
                         "template": {"metadata": {"labels": dict(self.labels),
                                                   "annotations": dict(self.template_annotations)},
                                      "spec": {"containers": [dict(c) for c in self.containers]}}},
                "status": {"replicas": len(self.pods), "readyReplicas": ready, "availableReplicas": ready,
                           "updatedReplicas": updated, "observedGeneration": self.generation,
                           "conditions": conditions}}

    def _patch_deployment(self, body: dict[str, Any]) -> None:
        before = (json.dumps(self.containers, sort_keys=True), json.dumps(self.template_annotations, sort_keys=True))
        self.annotations.update((body.get("metadata") or {}).get("annotations") or {})
        spec = body.get("spec") or {}
        if "strategy" in spec:
            self.strategy = spec["strategy"]
        template = spec.get("template") or {}
        self.template_annotations.update((template.get("metadata") or {}).get("annotations") or {})
        for patch in (template.get("spec") or {}).get("containers") or []:
            current = next((c for c in self.containers if c["name"] == patch.get("name")), None)
            if current is None:
                self.containers.append(dict(patch))
            else:
                current.update(patch)
        after = (json.dumps(self.containers, sort_keys=True), json.dumps(self.template_annotations, sort_keys=True))
        if after != before:  # a new pod template: a new ReplicaSet replaces the pods
            self.generation += 1
            self.template += 1
            replicas = self.replicas
            self.pods.clear()
            self._scale_to(replicas)

    def _pod_doc(self, pod: FakePod) -> dict[str, Any]:
        ready = pod.ready
        return {"kind": "Pod", "apiVersion": "v1",
                "metadata": {**self._meta(pod.name), "labels": dict(pod.labels),
                             "annotations": dict(pod.annotations),
                             "creationTimestamp": "2025-01-01T00:00:00Z"},
                "spec": {"containers": [dict(c) for c in self.containers], "nodeName": pod.node},
                "status": {"phase": "Running" if ready else "Pending",
                           "conditions": [{"type": "Ready", "status": "True" if ready else "False"}]}}

    # -- HTTP -----------------------------------------------------------------------------------------------

    def _handle(self, req: BaseHTTPRequestHandler) -> None:
        parts = urlsplit(req.path)
        try:
            with self._lock:
                self.requests.append((req.command, parts.path))
                status, doc = self._route(req, parts.path, parse_qs(parts.query))
        except HttpError as exc:
            status, doc = exc.status, {"kind": "Status", "apiVersion": "v1", "metadata": {}, "status": "Failure",
                                       "message": str(exc), "reason": REASONS.get(exc.status, "Unknown"),
                                       "code": exc.status}
        body = json.dumps(doc).encode()
        req.send_response(status)
        req.send_header("Content-Type", "application/json")
        req.send_header("Content-Length", str(len(body)))
        req.send_header("Audit-Id", str(uuid.uuid4()))  # the real API server's per-request id
        req.end_headers()
        req.wfile.write(body)

    def _route(self, req: BaseHTTPRequestHandler, path: str, query: dict[str, list[str]]) -> tuple[int, Any]:
        if req.headers.get("Authorization") != f"Bearer {self.token}":
            raise HttpError(401, "Unauthorized")
        for failure in self.failures:
            if failure.matches(req.command, path):
                raise HttpError(failure.status, f"injected failure {failure.status} for {req.command} {path}")
        body: Any = None
        if req.command == "PATCH":
            length = int(req.headers.get("Content-Length") or 0)
            try:
                body = json.loads(req.rfile.read(length) or b"null")
            except ValueError:
                raise HttpError(400, "the patch is not valid JSON") from None
            if not isinstance(body, dict):
                raise HttpError(415, "only merge patches (a JSON object) are supported by this fake")
        if m := DEPLOYMENT.match(path):
            ns, name, scale = m.groups()
            if ns != self.namespace or name != self.deployment:
                raise HttpError(404, f'deployments.apps "{name}" not found')
            if scale is None:
                if req.command == "PATCH":
                    self._patch_deployment(body)
                elif req.command != "GET":
                    raise HttpError(405, "only GET and PATCH on the deployment itself")
                return 200, self._deployment_doc()
            if req.command == "PATCH":
                replicas = (body.get("spec") or {}).get("replicas")
                if isinstance(replicas, bool) or not isinstance(replicas, int) or replicas < 0:
                    raise HttpError(422, f"Scale.autoscaling \"{name}\" is invalid: spec.replicas: Invalid value: "
                                         f"{replicas!r}: must be greater than or equal to 0")
                self._scale_to(replicas)
            return 200, self._scale_doc()
        if m := PODS.match(path):
            ns, pod_name = m.groups()
            pods = [p for p in self.pods.values() if ns == self.namespace]
            if pod_name is None:
                if req.command != "GET":
                    raise HttpError(405, "only GET on the pod list")
                wanted = _parse_selector((query.get("labelSelector") or [""])[0])
                items = [self._pod_doc(p) for p in pods if all(p.labels.get(k) == v for k, v in wanted.items())]
                return 200, {"kind": "PodList", "apiVersion": "v1", "metadata": {"resourceVersion": "1"},
                             "items": items}
            pod = next((p for p in pods if p.name == pod_name), None)
            if pod is None:
                raise HttpError(404, f'pods "{pod_name}" not found')
            if req.command != "PATCH":
                raise HttpError(405, "only PATCH on a pod")
            annotations = (body.get("metadata") or {}).get("annotations") or {}
            for key, value in annotations.items():
                if value is None:
                    pod.annotations.pop(key, None)
                else:
                    pod.annotations[key] = str(value)
            return 200, self._pod_doc(pod)
        raise HttpError(404, f"the fake serves no {path}")


def _parse_selector(selector: str) -> dict[str, str]:
    """Equality-based label selectors only (k=v,k2==v2): what the provider sends for matchLabels."""
    wanted: dict[str, str] = {}
    for term in filter(None, (t.strip() for t in selector.split(","))):
        key, sep, value = term.partition("==") if "==" in term else term.partition("=")
        if not sep:
            raise HttpError(400, f"this fake supports only k=v label selectors, got {term!r}")
        wanted[key.strip()] = value.strip()
    return wanted
