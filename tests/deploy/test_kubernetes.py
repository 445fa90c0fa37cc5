"""deploy/kubernetes/: every object valid against the Kubernetes schemas (offline, kubernetes-validate), and the
invariants an operator relies on: probes, pinned images, no secret in a manifest, resources, non-root, commands the
image really has, RBAC that is exactly what the kubernetes provider calls, and only the gateways reaching inference.
"""

from __future__ import annotations

import copy
import json
import re
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import kubernetes_validate
import pytest
import yaml

from tests.deploy.manifests import (
    AGENT_IMAGE,
    KUBE,
    SERVER_IMAGE,
    VERSION,
    check_celery_command,
    check_management_command,
    containers,
    expand,
    find,
    invocation,
    kustomization,
    pod_spec,
    render,
    workloads,
)

# The oldest Kubernetes these manifests are for (pod-deletion-cost, PodSecurity labels and policy/v1 are all older)
# and the newest whose schemas kubernetes-validate carries.
KUBERNETES_VERSIONS = ("1.28.0", kubernetes_validate.latest_version())
SECRET_NAME = re.compile(r"SECRET|PASSWORD|PASSWD|TOKEN|CREDENTIAL|DATABASE_URL|REDIS_URL|_KEY$", re.I)
CREDENTIALS_IN_URL = re.compile(r"://[^/@\s]*:[^/@\s]*@")


@pytest.fixture(scope="module")
def docs() -> list[dict[str, Any]]:
    return render()


def env_of(container: dict[str, Any], docs: list[dict[str, Any]], namespace: str) -> dict[str, str]:
    """A container's environment as the kubelet builds it: envFrom ConfigMaps, then env (with $(VAR) expansion);
    fieldRefs get stand-in values, secret refs a placeholder."""
    env: dict[str, str] = {}
    for source in container.get("envFrom") or []:
        if "configMapRef" in source:
            env.update(find(docs, "ConfigMap", source["configMapRef"]["name"])["data"])
    stand_in = {"spec.nodeName": "gpu-node-7", "status.hostIP": "10.20.30.40", "metadata.name": "pod-0"}
    for item in container.get("env") or []:
        if "value" in item:
            env[item["name"]] = expand(item["value"], env)
        elif "fieldRef" in item.get("valueFrom", {}):
            env[item["name"]] = stand_in[item["valueFrom"]["fieldRef"]["fieldPath"]]
        else:
            env[item["name"]] = "<from a Secret>"
    return env


# --- the files ----------------------------------------------------------------------------------------------------
def test_the_kustomization_lists_every_manifest_and_only_existing_ones() -> None:
    listed = kustomization()["resources"]
    present = sorted(p.name for p in KUBE.glob("*.yaml") if p.name != "kustomization.yaml")
    assert sorted(listed) == present, "every manifest in deploy/kubernetes/ is applied by the kustomization"


@pytest.mark.parametrize("k8s_version", KUBERNETES_VERSIONS)
def test_every_object_is_valid_against_the_kubernetes_schemas(docs: list[dict[str, Any]], k8s_version: str) -> None:
    assert len(docs) >= 20
    errors = []
    for doc in docs:
        try:  # strict: a field the schema does not know (a typo) is an error, as the API server's strict mode
            kubernetes_validate.validate(doc, k8s_version, strict=True)
        except kubernetes_validate.ValidationError as exc:
            errors.append(f"{doc['kind']} {doc['metadata']['name']}: {exc.message} at {list(exc.path)}")
    assert errors == []


def test_the_validation_catches_a_misspelt_field_and_a_wrong_type(docs: list[dict[str, Any]]) -> None:
    web = copy.deepcopy(find(docs, "Deployment", "switchyard-web"))
    web["spec"]["replica"] = 2
    with pytest.raises(kubernetes_validate.ValidationError):
        kubernetes_validate.validate(web, KUBERNETES_VERSIONS[-1], strict=True)
    web = copy.deepcopy(find(docs, "Deployment", "switchyard-web"))
    web["spec"]["template"]["spec"]["containers"][0]["ports"][0]["containerPort"] = "eight thousand"
    with pytest.raises(kubernetes_validate.ValidationError):
        kubernetes_validate.validate(web, KUBERNETES_VERSIONS[-1], strict=True)


# --- images -------------------------------------------------------------------------------------------------------
def test_every_image_is_pinned_to_this_release_and_never_latest(docs: list[dict[str, Any]]) -> None:
    for override in kustomization()["images"]:
        assert override["newTag"] == VERSION, f"{override['name']} is released as {VERSION}"
    images = {c["image"] for d in workloads(docs) for c in containers(d)}
    assert images == {f"registry.example.com/switchyard/{SERVER_IMAGE}:{VERSION}",
                      f"registry.example.com/switchyard/{AGENT_IMAGE}:{VERSION}"}
    for d in workloads(docs):
        for c in containers(d):
            assert c.get("imagePullPolicy") != "Always" or ":" in c["image"]
            assert not c["image"].endswith(":latest")


# --- secrets ------------------------------------------------------------------------------------------------------
def test_no_secret_is_written_in_a_manifest(docs: list[dict[str, Any]]) -> None:
    assert [d for d in docs if d["kind"] == "Secret"] == [], "Secrets are created by the operator (docs/deploy.md)"
    for cm in (d for d in docs if d["kind"] == "ConfigMap"):
        for key, value in cm["data"].items():
            assert not SECRET_NAME.search(key), f"ConfigMap {cm['metadata']['name']} holds {key}: use a Secret"
            assert not CREDENTIALS_IN_URL.search(value), f"ConfigMap {cm['metadata']['name']}.{key} has a password"
    for d in workloads(docs):
        for c in containers(d):
            for item in c.get("env") or []:
                if SECRET_NAME.search(item["name"]) and item["name"] != "NVIDIA_DRIVER_CAPABILITIES":
                    assert "secretKeyRef" in item.get("valueFrom", {}), \
                        f"{d['metadata']['name']}/{c['name']}: {item['name']} must come from a Secret"
                assert not CREDENTIALS_IN_URL.search(str(item.get("value", "")))
            assert not any(CREDENTIALS_IN_URL.search(a) or a.startswith("sy_") for a in c.get("args") or [])


def test_the_server_pods_get_database_redis_and_secret_key_from_the_switchyard_secret(docs: list[dict[str, Any]]) -> None:
    for d in workloads(docs):
        for c in containers(d):
            if invocation(c["image"], c.get("command"), c.get("args")).program in ("manage.py", "celery"):
                refs = {i["name"]: i["valueFrom"]["secretKeyRef"] for i in c.get("env") or []
                        if "secretKeyRef" in i.get("valueFrom", {})}
                assert refs == {
                    "SWITCHYARD_DATABASE_URL": {"name": "switchyard", "key": "database-url"},
                    "SWITCHYARD_REDIS_URL": {"name": "switchyard", "key": "redis-url"},
                    "SWITCHYARD_SECRET_KEY": {"name": "switchyard", "key": "secret-key"},
                }, f"{d['metadata']['name']}/{c['name']}"


# --- resources, probes, users -------------------------------------------------------------------------------------
def test_every_container_requests_cpu_and_memory_and_has_a_memory_limit(docs: list[dict[str, Any]]) -> None:
    for d in workloads(docs):
        for c in containers(d):
            res = c.get("resources") or {}
            where = f"{d['metadata']['name']}/{c['name']}"
            assert {"cpu", "memory"} <= set(res.get("requests", {})), f"{where} requests cpu and memory"
            assert "memory" in res.get("limits", {}), f"{where} has a memory limit"
            assert "nvidia.com/gpu" not in {**res.get("requests", {}), **res.get("limits", {})}, \
                f"{where} must not take a GPU from the device plugin"


@pytest.mark.parametrize(("deployment", "port"), [("switchyard-web", 8000), ("switchyard-gateway", 8400)])
def test_web_and_gateway_have_probes_on_healthz(docs: list[dict[str, Any]], deployment: str, port: int) -> None:
    c = find(docs, "Deployment", deployment)["spec"]["template"]["spec"]["containers"][0]
    ports = {p["name"]: p["containerPort"] for p in c["ports"]}
    for probe in ("startupProbe", "readinessProbe", "livenessProbe"):
        get = c[probe]["httpGet"]
        assert get["path"] == "/healthz" and ports.get(get["port"], get["port"]) == port, f"{deployment} {probe}"
    argv = c["args"]
    assert argv[argv.index("--port") + 1] == str(port) and argv[argv.index("--host") + 1] == "0.0.0.0"
    service = find(docs, "Service", deployment)
    labels = find(docs, "Deployment", deployment)["spec"]["template"]["metadata"]["labels"]
    assert service["spec"]["selector"].items() <= labels.items()
    assert service["spec"]["ports"][0]["port"] == port


def test_every_pod_runs_as_non_root_but_the_agent_state_dir_chown(docs: list[dict[str, Any]]) -> None:
    exceptions = []
    for d in workloads(docs):
        spec = pod_spec(d)
        assert spec is not None
        pod_ctx = spec.get("securityContext") or {}
        for c in containers(d):
            ctx = {**pod_ctx, **(c.get("securityContext") or {})}
            assert ctx.get("allowPrivilegeEscalation") is False, f"{d['metadata']['name']}/{c['name']}"
            assert ctx.get("capabilities", {}).get("drop") == ["ALL"]
            if ctx.get("runAsUser") == 0:
                exceptions.append((d["metadata"]["name"], c["name"], ctx["capabilities"].get("add"), c["command"]))
            else:
                assert ctx.get("runAsNonRoot") is True and ctx.get("runAsUser") == 10001, \
                    f"{d['metadata']['name']}/{c['name']} runs as the image's non-root user"
                assert not ctx.get("capabilities", {}).get("add")
    assert exceptions == [("switchyard-agent", "state-dir", ["CHOWN"],
                           ["chown", "10001:10001", "/var/lib/switchyard-agent"])]


def test_the_control_plane_namespace_enforces_the_restricted_pod_security_standard(docs: list[dict[str, Any]]) -> None:
    ns = find(docs, "Namespace", "switchyard")["metadata"]["labels"]
    assert ns["pod-security.kubernetes.io/enforce"] == "restricted"
    for d in workloads(docs):
        if d["metadata"]["namespace"] == "switchyard":
            spec = pod_spec(d)
            assert spec is not None
            assert not spec.get("hostNetwork") and not any("hostPath" in v for v in spec.get("volumes") or [])
            assert spec["securityContext"]["seccompProfile"] == {"type": "RuntimeDefault"}


# --- commands -----------------------------------------------------------------------------------------------------
def test_every_container_runs_a_command_the_image_has_with_valid_flags(docs: list[dict[str, Any]]) -> None:
    seen = set()
    for d in workloads(docs):
        for c in containers(d):
            inv = invocation(c["image"], c.get("command"), c.get("args"))
            if inv.program == "manage.py":
                check_management_command(inv.name, inv.argv)
                seen.add(inv.name)
            elif inv.program == "celery":
                seen.add("celery " + check_celery_command(inv.argv))
            elif inv.program == "agent":
                seen.add("agent")  # resolved in full below
            else:
                assert (inv.name, c["name"]) == ("chown", "state-dir"), f"{c['name']} runs {inv.name}"
    assert seen == {"serve", "gateway", "migrate", "celery worker", "celery beat", "agent"}


def test_a_misspelt_flag_or_command_would_be_caught() -> None:
    from django.core.management.base import CommandError

    with pytest.raises(CommandError):
        check_management_command("serve", ["--hots", "0.0.0.0"])
    with pytest.raises(CommandError):
        check_management_command("sevre", [])
    import click

    with pytest.raises(click.ClickException):
        check_celery_command(["-A", "dashboard", "worker", "--concurency", "2"])


def test_exactly_one_beat_and_it_never_overlaps_itself(docs: list[dict[str, Any]]) -> None:
    beats = [d for d in workloads(docs) for c in containers(d)
             if invocation(c["image"], c.get("command"), c.get("args")).argv[2:3] == ["beat"]]
    assert len(beats) == 1 and beats[0]["spec"]["replicas"] == 1
    assert beats[0]["spec"]["strategy"] == {"type": "Recreate"}


def test_the_migration_job_runs_migrate_and_the_others_wait_for_it(docs: list[dict[str, Any]]) -> None:
    job = find(docs, "Job", "switchyard-migrate")
    assert job["spec"]["template"]["spec"]["containers"][0]["args"][0] == "migrate"
    for name in ("switchyard-web", "switchyard-gateway", "switchyard-worker"):
        init = find(docs, "Deployment", name)["spec"]["template"]["spec"]["initContainers"]
        assert [i["args"] for i in init] == [["migrate", "--check"]], name


# --- the agent ----------------------------------------------------------------------------------------------------
def test_the_agent_resolves_to_its_node_its_token_file_and_the_node_inference_server(
        docs: list[dict[str, Any]], tmp_path: Path) -> None:
    from agents.cli import build_parser, resolve

    ds = find(docs, "DaemonSet", "switchyard-agent")
    spec = ds["spec"]["template"]["spec"]
    agent = spec["containers"][0]
    env = env_of(agent, docs, "switchyard-agent")
    # The token file as the Secret volume would present it: the key named after the node, holding {"token": ...}.
    mounts = {m["name"]: m["mountPath"] for m in agent["volumeMounts"]}
    volumes = {v["name"]: v for v in spec["volumes"]}
    assert volumes["tokens"]["secret"]["secretName"] == "switchyard-agent-tokens"
    token_dir = tmp_path / "tokens"
    token_dir.mkdir()
    (token_dir / "gpu-node-7").write_text(json.dumps({"token": "sy_node_abc"}))
    argv = [expand(a, env).replace(mounts["tokens"], str(token_dir)) for a in agent["args"]]
    settings = resolve(build_parser().parse_args(argv), {k: v for k, v in env.items() if k.startswith("SWITCHYARD")})
    assert settings.node == "gpu-node-7"  # spec.nodeName
    assert settings.token == "sy_node_abc"
    assert settings.server == "http://switchyard-web.switchyard.svc:8000"
    assert settings.inference_url == "http://10.20.30.40:8000"  # the node's address, the inference port
    assert str(settings.state_dir) == mounts["state"] == volumes["state"]["hostPath"]["path"]
    assert env["NVIDIA_VISIBLE_DEVICES"] == "all" and env["NVIDIA_DRIVER_CAPABILITIES"] == "utility"
    assert spec["nodeSelector"] == {"nvidia.com/gpu.present": "true"} and spec["hostNetwork"] is True
    # The token files are readable by the agent's group only.
    assert volumes["tokens"]["secret"]["defaultMode"] == 0o440 and spec["securityContext"]["fsGroup"] == 10001


def test_the_web_app_answers_to_the_name_agents_push_to(docs: list[dict[str, Any]]) -> None:
    allowed = find(docs, "ConfigMap", "switchyard")["data"]["SWITCHYARD_ALLOWED_HOSTS"].split(",")
    server = find(docs, "ConfigMap", "switchyard-agent")["data"]["SWITCHYARD_AGENT_SERVER"]
    assert urlsplit(server).hostname in allowed
    gateway_url = find(docs, "ConfigMap", "switchyard")["data"]["SWITCHYARD_GATEWAY_URL"]
    host, port = urlsplit(gateway_url).hostname, urlsplit(gateway_url).port
    service = find(docs, "Service", "switchyard-gateway")
    assert host == f"{service['metadata']['name']}.{service['metadata']['namespace']}.svc"
    assert port == service["spec"]["ports"][0]["port"]


# --- RBAC: exactly what the kubernetes provider calls ---------------------------------------------------------------
def rbac_request(method: str, path: str) -> tuple[str, str, str, str, str]:
    """(namespace, apiGroup, resource, verb, name) of a Kubernetes API request, as the RBAC authorizer sees it."""
    parts = path.strip("/").split("/")
    group = "" if parts[0] == "api" else parts[1]
    rest = parts[2:] if parts[0] == "api" else parts[3:]
    assert rest[0] == "namespaces"
    namespace, resource, name = rest[1], rest[2], (rest[3] if len(rest) > 3 else "")
    if len(rest) > 4:
        resource += "/" + rest[4]
    verb = {"GET": "get" if name else "list", "PATCH": "patch", "PUT": "update", "POST": "create",
            "DELETE": "delete"}[method]
    return namespace, group, resource, verb, name


def allowed(rules: list[dict[str, Any]], group: str, resource: str, verb: str, name: str) -> dict[str, Any] | None:
    for rule in rules:
        if (group in rule["apiGroups"] and resource in rule["resources"] and verb in rule["verbs"]
                and (not rule.get("resourceNames") or name in rule["resourceNames"])):
            return rule
    return None


def test_the_scaler_role_allows_exactly_what_the_kubernetes_provider_does(
        docs: list[dict[str, Any]], tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from control.providers import registry
    from control.providers.kubernetes.provider import CA_FILE_ENV, TOKEN_FILE_ENV
    from tests.providers.fakes.kubernetes import FakeKubernetes

    role = find(docs, "Role", "switchyard-scaler")
    binding = find(docs, "RoleBinding", "switchyard-scaler")
    namespace = role["metadata"]["namespace"]
    deployment = role["rules"][0]["resourceNames"][0]
    token = tmp_path / "token"
    token.write_text("sa-token")
    monkeypatch.setenv(TOKEN_FILE_ENV, str(token))
    monkeypatch.delenv(CA_FILE_ENV, raising=False)
    with FakeKubernetes(namespace=namespace, deployment=deployment, token="sa-token", replicas=2) as kube:
        provider = registry.get("kubernetes", {"namespace": namespace, "deployment": deployment, "api_url": kube.url})
        provider.current_size()
        provider.set_desired_size(3)
        pods = provider.list_instances()
        provider.remove_instance(pods[0].id)
        calls = {rbac_request(m, p) for m, p in kube.requests}
    used: list[dict[str, Any]] = []
    for ns, group, resource, verb, name in sorted(calls):
        assert ns == namespace
        rule = allowed(role["rules"], group, resource, verb, name)
        assert rule is not None, f"the Role forbids {verb} {resource} {name}: the provider would get a 403"
        used.append(rule)
    granted = {(g, r, v) for rule in role["rules"] for g in rule["apiGroups"] for r in rule["resources"]
               for v in rule["verbs"]}
    needed = {(g, r, v) for _, g, r, v, _ in calls}
    assert granted == needed, f"granted but never used: {granted - needed}"
    # Deployments are narrowed to the scaled one; the pods the ReplicaSet names cannot be.
    for rule in role["rules"]:
        if rule["resources"][0].startswith("deployments"):
            assert rule["resourceNames"] == [deployment]
    assert binding["roleRef"]["name"] == role["metadata"]["name"]
    assert binding["subjects"] == [{"kind": "ServiceAccount", "name": "switchyard-controller",
                                    "namespace": "switchyard"}]
    # ... and that service account is the workers', the only pods that mount an API token.
    for d in workloads(docs):
        spec = pod_spec(d)
        assert spec is not None
        mounts_token = spec.get("automountServiceAccountToken")
        if mounts_token is None:
            mounts_token = next(s for s in docs if s["kind"] == "ServiceAccount"
                                and s["metadata"]["name"] == spec["serviceAccountName"]
                                and s["metadata"]["namespace"] == d["metadata"]["namespace"]
                                ).get("automountServiceAccountToken", True)
        assert bool(mounts_token) == (d["metadata"]["name"] == "switchyard-worker"), d["metadata"]["name"]
        if mounts_token:
            assert spec["serviceAccountName"] == "switchyard-controller"


# --- NetworkPolicy --------------------------------------------------------------------------------------------------
def test_only_the_gateways_reach_the_inference_port(docs: list[dict[str, Any]]) -> None:
    policy = find(docs, "NetworkPolicy", "inference-from-switchyard-gateway")
    spec = policy["spec"]
    assert spec["policyTypes"] == ["Ingress"] and spec["podSelector"]["matchLabels"]
    assert policy["metadata"]["namespace"] == find(docs, "Role", "switchyard-scaler")["metadata"]["namespace"]
    [rule] = spec["ingress"]
    [peer] = rule["from"]
    gateway = find(docs, "Deployment", "switchyard-gateway")
    labels = gateway["spec"]["template"]["metadata"]["labels"]
    assert peer["podSelector"]["matchLabels"].items() <= labels.items()
    assert peer["namespaceSelector"]["matchLabels"] == {"kubernetes.io/metadata.name": gateway["metadata"]["namespace"]}
    # The peer selects the gateways and nothing else of Switchyard's.
    for d in workloads(docs):
        pod_labels = d["spec"]["template"]["metadata"]["labels"]
        if d["metadata"]["name"] != "switchyard-gateway" and d["metadata"]["namespace"] == "switchyard":
            assert not peer["podSelector"]["matchLabels"].items() <= pod_labels.items(), d["metadata"]["name"]
    port = int(find(docs, "ConfigMap", "switchyard-agent")["data"]["INFERENCE_PORT"])
    assert rule["ports"] == [{"protocol": "TCP", "port": port}]


def test_every_manifest_parses_as_yaml_with_a_kind_and_a_name() -> None:
    for path in sorted(KUBE.glob("*.yaml")):
        for doc in yaml.safe_load_all(path.read_text()):
            if path.name != "kustomization.yaml":
                assert doc["kind"] and doc["metadata"]["name"], path.name


def test_the_token_script_fills_the_secret_the_agent_reads_for_the_nodes_it_runs_on(docs: list[dict[str, Any]]) -> None:
    import subprocess

    script = KUBE / "issue-agent-tokens.sh"
    assert subprocess.run(["bash", "-n", str(script)], capture_output=True).returncode == 0
    text = script.read_text()
    ds = find(docs, "DaemonSet", "switchyard-agent")
    spec = ds["spec"]["template"]["spec"]
    secret = next(v["secret"]["secretName"] for v in spec["volumes"] if "secret" in v)
    assert f"AGENT_NS={ds['metadata']['namespace']}\n" in text and f"SECRET={secret}\n" in text
    [(label, value)] = spec["nodeSelector"].items()
    assert f"-l {label}={value}" in text
    # createnode runs in the web Deployment's container, which has the database.
    web = find(docs, "Deployment", "switchyard-web")
    assert f"exec deploy/{web['metadata']['name']} -c {web['spec']['template']['spec']['containers'][0]['name']}" in text
    check_management_command("createnode", ["gpu-node-7", "--pool", "gpu", "--rotate", "--reason", "x"])


def test_every_switchyard_variable_set_by_a_manifest_or_compose_is_one_the_app_reads(docs: list[dict[str, Any]]) -> None:
    """A misspelt variable is silently ignored: each one must be in README's configuration table."""
    from tests.deploy.manifests import DOCKER, ROOT

    readme = (ROOT / "README.md").read_text()
    table = readme[readme.index("## Configuration"):readme.index("## Operations")]
    known = set(re.findall(r"`(SWITCHYARD_[A-Z0-9_]+)`", table))
    names = set()
    for d in docs:
        if d["kind"] == "ConfigMap":
            names |= set(d["data"])
        for c in containers(d):
            names |= {i["name"] for i in c.get("env") or []}
    compose = yaml.safe_load((DOCKER / "compose.yml").read_text())
    for svc in compose["services"].values():
        names |= set(svc.get("environment") or {})
    ours = {n for n in names if n.startswith("SWITCHYARD_")}
    assert {"SWITCHYARD_DATABASE_URL", "SWITCHYARD_AGENT_SERVER", "SWITCHYARD_ALLOWED_HOSTS"} <= ours
    assert ours - known == set(), "not in README's configuration table (misspelt, or undocumented)"
