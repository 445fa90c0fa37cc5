"""The `kubernetes` provider: a Deployment's replicas, through the scale subresource."""

from control.providers.base import Field, http_url, pattern, timeout_field

FIELDS = (
    Field("namespace", "the Deployment's namespace", required=True,
          check=pattern(r"(?=.{1,63}$)[a-z0-9]([-a-z0-9]*[a-z0-9])?",
                        "must be a Kubernetes namespace name (lowercase letters, digits and '-', at most 63)")),
    Field("deployment", "the Deployment's name", required=True,
          check=pattern(r"(?=.{1,253}$)[a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*",
                        "must be a Kubernetes object name (lowercase letters, digits, '-' and '.')")),
    Field("api_url", "the API server's URL; unset: KUBECONFIG or the in-cluster service account", check=http_url),
    # Which Switchyard node a pod is: an agent beside the engine in the pod reports the pod's name; the DaemonSet
    # agent of deploy/kubernetes/ reports the Kubernetes node's name (the pod's spec.nodeName). Scale-in drains the
    # node first, so it must find it by the name its agent reports.
    Field("node_names", "how the pool's nodes are named: 'pod' (an agent in each pod) or 'node' (the DaemonSet "
          "agent: the pod's Kubernetes node)", default="pod",
          check=pattern(r"pod|node", "must be 'pod' or 'node'")),
    Field("container", "the engine's container in the pod template (deployment rollouts set its args); unset: the "
          "first", check=pattern(r"[a-z0-9]([-a-z0-9]{0,61}[a-z0-9])?", "must be a container name")),
    timeout_field(10.0),
)
SECRETS_HINT = ("put the bearer token in a file and set SWITCHYARD_K8S_TOKEN_FILE (and SWITCHYARD_K8S_CA_FILE for "
                "the API server's CA), or use KUBECONFIG")
