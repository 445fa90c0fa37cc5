"""Scale a Deployment: its replicas through the scale subresource, its pods as the instances.

Credentials: with `api_url` in the config, the bearer token in the file SWITCHYARD_K8S_TOKEN_FILE (re-read before
each request, since projected service-account tokens rotate) and the API server's CA in SWITCHYARD_K8S_CA_FILE
(else the system's CAs); without a token file no Authorization is sent (say, `kubectl proxy`). Without `api_url`:
the in-cluster service account when running in a pod, else the kubeconfig (KUBECONFIG or ~/.kube/config).

remove_instance(pod) sets the pod's `controller.kubernetes.io/pod-deletion-cost` to -1000 and then lowers the
replicas by one, so the ReplicaSet deletes that pod rather than another (a Deployment cannot delete a named pod;
deleting the pod alone would make the ReplicaSet start a replacement).
"""

from __future__ import annotations

import json
import os
from collections.abc import Callable
from typing import Any, TypeVar

import urllib3
from kubernetes import client as k8s
from kubernetes import config as k8s_config
from kubernetes.client.exceptions import ApiException, ApiValueError

from control.providers.base import (
    Instance,
    Provider,
    ProviderError,
    RolloutStatus,
    Size,
    read_secret_file,
    request_id,
)
from control.providers.kubernetes import deploy

T = TypeVar("T")

TOKEN_FILE_ENV = "SWITCHYARD_K8S_TOKEN_FILE"
CA_FILE_ENV = "SWITCHYARD_K8S_CA_FILE"
DELETION_COST = "controller.kubernetes.io/pod-deletion-cost"
REMOVE_COST = "-1000"  # below any cost operators give (the default is 0): this pod goes first among ready pods
RBAC_HINT = ("grant the controller's service account get and patch on deployments/scale, get on deployments, list "
             "and patch on pods (docs/providers.md has the Role)")


class Gone(Exception):
    """A 404 where the caller expects one (the pod went away)."""


class KubernetesProvider(Provider):
    kind = "kubernetes"

    rolls_out_itself = True

    def __init__(self, namespace: str, deployment: str, api_url: str | None = None, timeout_s: float = 10.0,
                 node_names: str = "pod", container: str | None = None) -> None:
        self.container = container  # the engine's container in the pod template; None: the first
        self.namespace = namespace
        self.node_names = node_names
        self.deployment = deployment
        self.api_url = api_url
        self.timeout_s = timeout_s
        self.max_size = None  # a Deployment has no maximum (quotas and node capacity are not its own)
        self._apps: k8s.AppsV1Api | None = None
        self._core: k8s.CoreV1Api | None = None

    # -- connection -----------------------------------------------------------------------------------------

    def _configuration(self) -> k8s.Configuration:
        cfg = k8s.Configuration()
        if self.api_url:
            cfg.host = self.api_url.rstrip("/")
            token_file = os.environ.get(TOKEN_FILE_ENV)
            if token_file:
                cfg.api_key = {"authorization": read_secret_file(token_file, TOKEN_FILE_ENV, "Kubernetes token")}
                cfg.api_key_prefix = {"authorization": "Bearer"}
                cfg.refresh_api_key_hook = lambda c: c.api_key.update(authorization=read_secret_file(token_file, TOKEN_FILE_ENV, "Kubernetes token"))
            ca_file = os.environ.get(CA_FILE_ENV)
            if ca_file:
                if not os.path.isfile(ca_file):
                    raise ProviderError(f"the Kubernetes CA file {ca_file} ({CA_FILE_ENV}) does not exist",
                                        permanent=True)
                cfg.ssl_ca_cert = ca_file
        else:
            try:
                if os.environ.get("KUBERNETES_SERVICE_HOST"):
                    k8s_config.load_incluster_config(client_configuration=cfg)
                else:
                    # KUBECONFIG read now (the client reads it once, at import); persist_config=False: never write
                    # refreshed tokens back into an operator's kubeconfig.
                    k8s_config.load_kube_config(config_file=os.environ.get("KUBECONFIG") or None,
                                                client_configuration=cfg, persist_config=False)
            except (k8s_config.ConfigException, OSError, TypeError, ValueError) as exc:
                raise ProviderError(f"no Kubernetes credentials ({exc}): set api_url in the pool's provider config "
                                    f"and {TOKEN_FILE_ENV}, or KUBECONFIG, or run the controller in the cluster",
                                    permanent=True) from None
        # One retry of a refused or dropped connection, none of a read that timed out (that would double the wait);
        # the controller's loop is the real retry.
        cfg.retries = urllib3.Retry(total=1, read=0, redirect=0)
        return cfg

    def _api(self) -> tuple[k8s.AppsV1Api, k8s.CoreV1Api]:
        if self._apps is None or self._core is None:
            api = k8s.ApiClient(self._configuration())
            self._apps, self._core = k8s.AppsV1Api(api), k8s.CoreV1Api(api)
        return self._apps, self._core

    def _call(self, action: str, fn: Callable[..., T], *args: Any, gone_ok: bool = False, **kwargs: Any) -> T:
        where = f"deployment '{self.deployment}' in namespace '{self.namespace}'"
        try:
            return fn(*args, _request_timeout=(self.timeout_s, self.timeout_s), **kwargs)
        except ApiException as exc:
            status = int(exc.status or 0)
            message = _status_message(exc)
            if status == 404 and gone_ok:
                raise Gone() from None
            if status == 0:  # the client's wrapping of a TLS failure
                raise ProviderError(f"TLS to the Kubernetes API at {self._host()} failed ({exc.reason}); check "
                                    f"{CA_FILE_ENV} (the API server's CA)", permanent=True) from None
            if status == 401:
                raise ProviderError(f"the Kubernetes API refused the credentials to {action} (401 {message}); "
                                    f"check {TOKEN_FILE_ENV} (or the kubeconfig)", permanent=True) from None
            if status == 403:
                raise ProviderError(f"the Kubernetes API forbids the controller to {action} for {where} "
                                    f"(403 {message}); {RBAC_HINT}", permanent=True) from None
            if status == 404:
                raise ProviderError(f"deployment '{self.deployment}' not found in namespace '{self.namespace}' "
                                    f"(404 {message}); check the pool's provider config", permanent=True) from None
            if status in (408, 409, 429) or status >= 500:
                raise ProviderError(f"the Kubernetes API could not {action} for {where} now ({status} {message}); "
                                    "retrying") from None
            raise ProviderError(f"the Kubernetes API refused to {action} for {where} ({status} {message})",
                                permanent=True) from None
        except urllib3.exceptions.HTTPError as exc:  # refused, DNS, timeouts, a dropped connection, TLS
            if "CERTIFICATE_VERIFY_FAILED" in str(exc):  # retrying cannot help: the CA must be configured
                raise ProviderError(f"the Kubernetes API at {self._host()} has a certificate the controller does not "
                                    f"trust; set {CA_FILE_ENV} to the API server's CA", permanent=True) from None
            raise ProviderError(f"cannot reach the Kubernetes API at {self._host()} to {action}: "
                                f"{self._describe(exc)}") from None
        except (ApiValueError, ValueError) as exc:  # an answer the client could not read as the object
            raise ProviderError(f"the Kubernetes API at {self._host()} gave an unreadable answer to {action}: "
                                f"{exc}") from None

    def _describe(self, exc: urllib3.exceptions.HTTPError) -> str:
        reason = exc.reason if isinstance(exc, urllib3.exceptions.MaxRetryError) and exc.reason else exc
        if isinstance(reason, urllib3.exceptions.NewConnectionError):  # first: urllib3 makes it a TimeoutError too
            return "connection refused or unreachable"
        if isinstance(reason, urllib3.exceptions.TimeoutError):
            return f"no answer within {self.timeout_s:g} s"
        return f"{type(reason).__name__}: {reason}"

    def _host(self) -> str:
        return self.api_url or (self._apps.api_client.configuration.host if self._apps else "(kubeconfig)")

    # -- the interface --------------------------------------------------------------------------------------

    def current_size(self) -> Size:
        apps, _ = self._api()
        dep = self._call("read the deployment", apps.read_namespaced_deployment, self.deployment, self.namespace)
        return Size(desired=int(dep.spec.replicas or 0), actual=int((dep.status and dep.status.ready_replicas) or 0))

    def set_desired_size(self, n: int) -> str:
        self._check_size(n)
        apps, _ = self._api()
        return self._scale(apps, n)

    def _scale(self, apps: k8s.AppsV1Api, n: int) -> str:
        _, _, headers = self._call(f"scale to {n}", apps.patch_namespaced_deployment_scale_with_http_info,
                                   self.deployment, self.namespace, {"spec": {"replicas": n}})
        # The API server's Audit-Id finds the request in the cluster's audit log.
        return str((headers or {}).get("Audit-Id") or request_id("k8s"))

    def list_instances(self) -> list[Instance]:
        # A pod not yet scheduled has no node: it is named after itself until it is (it cannot be serving yet).
        return [Instance(id=p.metadata.name, state=_pod_state(p),
                         node=(p.spec.node_name or p.metadata.name) if self.node_names == "node" else p.metadata.name)
                for p in self._pods()]

    def _pods(self) -> list[Any]:
        apps, core = self._api()
        dep = self._call("read the deployment", apps.read_namespaced_deployment, self.deployment, self.namespace)
        selector = _selector(dep.spec.selector)
        pods = self._call("list the deployment's pods", core.list_namespaced_pod, self.namespace,
                          label_selector=selector)
        return list(pods.items)

    def remove_instance(self, instance_id: str) -> str:
        apps, core = self._api()
        pod = next((p for p in self._pods() if p.metadata.name == instance_id), None)
        # Not one of the deployment's pods (gone, or another's: marking it would make ours remove the wrong one), or
        # already terminating (a retried call): the goal is met; lowering replicas again would remove another pod.
        if pod is None or pod.metadata.deletion_timestamp is not None:
            return request_id("k8s", "already-gone")
        try:
            self._call(f"mark pod {instance_id} for removal", core.patch_namespaced_pod, instance_id, self.namespace,
                       {"metadata": {"annotations": {DELETION_COST: REMOVE_COST}}}, gone_ok=True)
        except Gone:
            return request_id("k8s", "already-gone")
        scale = self._call("read the scale", apps.read_namespaced_deployment_scale, self.deployment, self.namespace)
        return self._scale(apps, max(0, int(scale.spec.replicas or 0) - 1))


    def apply_deployment(self, entry: dict[str, Any], revision: int | None) -> str:
        """Patch the pod template (engine args, image) and the rolling-update strategy (deploy.py)."""
        return deploy.apply(self, entry, revision)

    def deployment_status(self, request_id: str) -> RolloutStatus:
        return deploy.status(self)


def _status_message(exc: ApiException) -> str:
    """The Kubernetes Status object's message, else the HTTP reason."""
    try:
        doc = json.loads(exc.body or "")
        return str(doc.get("message") or exc.reason)
    except (ValueError, AttributeError, TypeError):
        return str(exc.reason)


def _selector(selector: Any) -> str:
    """A LabelSelector as the query string the API takes."""
    terms = [f"{k}={v}" for k, v in sorted((selector.match_labels or {}).items())]
    for expr in selector.match_expressions or []:
        values = ",".join(expr.values or [])
        terms.append({"In": f"{expr.key} in ({values})", "NotIn": f"{expr.key} notin ({values})",
                      "Exists": expr.key, "DoesNotExist": f"!{expr.key}"}[expr.operator])
    return ",".join(terms)


def _pod_state(pod: Any) -> str:
    if pod.metadata.deletion_timestamp is not None:
        return "terminating"
    phase = str((pod.status and pod.status.phase) or "Unknown")
    ready = any(c.type == "Ready" and c.status == "True" for c in (pod.status and pod.status.conditions) or [])
    if phase == "Running":
        return "ready" if ready else "running"
    return phase.lower()


PROVIDER = KubernetesProvider
