"""Reading what deploy/ and docker/ describe, and checking a container's command against the code it would run.

Offline and without a container engine: the kustomization is rendered here (its resources and its image
overrides, the only transformers it uses), and a command is checked by the parser of the program it starts (a
Django management command's, Celery's, the agent's), so a misspelt flag or a command that does not exist fails.
"""

from __future__ import annotations

import os
import re
import tomllib
import warnings
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

ROOT = Path(__file__).resolve().parents[2]
KUBE = ROOT / "deploy" / "kubernetes"
DOCKER = ROOT / "docker"
VERSION = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["version"]

SERVER_IMAGE = "switchyard"  # docker/Dockerfile's `server` target, as the manifests name it before kustomize
AGENT_IMAGE = "switchyard-agent"  # its `agent` target
SERVER_ENTRYPOINT = ["python", "-m", "django"]
AGENT_ENTRYPOINT = ["python", "-m", "agents"]


def kustomization() -> dict[str, Any]:
    return yaml.safe_load((KUBE / "kustomization.yaml").read_text())


def render() -> list[dict[str, Any]]:
    """Every object of the kustomization, with its `images` overrides applied (what `kubectl apply -k` sends)."""
    kust = kustomization()
    overrides = {i["name"]: i for i in kust.get("images", [])}
    docs: list[dict[str, Any]] = []
    for name in kust["resources"]:
        docs += [d for d in yaml.safe_load_all((KUBE / name).read_text()) if d]
    for doc in docs:
        for c in containers(doc):
            name, _, tag = c["image"].partition(":")
            if name in overrides:
                o = overrides[name]
                c["image"] = f"{o.get('newName', name)}:{o.get('newTag', tag)}"
    return docs


def pod_spec(doc: dict[str, Any]) -> dict[str, Any] | None:
    spec = doc.get("spec") or {}
    if doc["kind"] in ("Deployment", "DaemonSet", "StatefulSet", "Job"):
        return spec["template"]["spec"]
    if doc["kind"] == "CronJob":
        return spec["jobTemplate"]["spec"]["template"]["spec"]
    return None


def containers(doc: dict[str, Any], init: bool = True) -> list[dict[str, Any]]:
    spec = pod_spec(doc)
    if spec is None:
        return []
    return [*(spec.get("initContainers") or [] if init else []), *spec.get("containers", [])]


def workloads(docs: list[dict[str, Any]]) -> Iterator[dict[str, Any]]:
    return (d for d in docs if pod_spec(d) is not None)


def find(docs: list[dict[str, Any]], kind: str, name: str) -> dict[str, Any]:
    found = [d for d in docs if d["kind"] == kind and d["metadata"]["name"] == name]
    assert len(found) == 1, f"expected one {kind} {name}, found {len(found)}"
    return found[0]


# --- commands -----------------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class Invocation:
    program: str  # "manage.py", "celery", "agent" or "other"
    name: str  # the management or Celery command; the executable for "other"
    argv: list[str]


def invocation(image: str, command: list[str] | None, args: list[str] | None) -> Invocation:
    """What a container runs, given its image's entrypoint (docker/Dockerfile) and its command/args overrides."""
    base = image.rsplit("/", 1)[-1].partition(":")[0]
    if base not in (SERVER_IMAGE, AGENT_IMAGE):
        return Invocation("other", base, [*(command or []), *(args or [])])
    entry = SERVER_ENTRYPOINT if base == SERVER_IMAGE else AGENT_ENTRYPOINT
    argv = [*(command if command is not None else entry), *(args or [])]
    if argv[:3] == SERVER_ENTRYPOINT:
        return Invocation("manage.py", argv[3] if len(argv) > 3 else "", argv[4:])
    if argv[:3] == ["python", "-m", "celery"]:
        return Invocation("celery", "", argv[3:])
    if argv[:3] == AGENT_ENTRYPOINT:
        return Invocation("agent", "agent", argv[3:])
    return Invocation("other", argv[0], argv[1:])


def check_management_command(name: str, argv: list[str]) -> None:
    """Parse `argv` as Django would for `manage.py name argv`: CommandError for an unknown command or a bad flag."""
    from django.core.management import get_commands, load_command_class
    from django.core.management.base import CommandError

    commands = get_commands()
    if name not in commands:
        raise CommandError(f"no management command {name!r}")
    command = load_command_class(commands[name], name)
    command.create_parser("manage.py", name).parse_args(argv)


def check_celery_command(argv: list[str]) -> str:
    """Parse `celery argv` with Celery's own command line, loading the -A app; returns the subcommand."""
    from celery.app.utils import find_app
    from celery.bin.base import CLIContext
    from celery.bin.celery import celery

    ctx = celery.make_context("celery", list(argv))
    app = find_app(ctx.params["app"])
    ctx.obj = CLIContext(app=app, no_color=True, workdir=None, quiet=True)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)  # click 8.2 keeps the subcommand in protected_args
        rest = [*ctx.protected_args, *ctx.args]
    name, sub, rest = celery.resolve_command(ctx, rest)
    assert sub is not None and name is not None
    sub.make_context(name, rest, parent=ctx)
    return name


VAR_REF = re.compile(r"\$\(([A-Za-z_][A-Za-z0-9_]*)\)")


def expand(value: str, env: dict[str, str]) -> str:
    """Kubernetes' $(VAR) expansion in command, args and env values (an unknown name stays as written)."""
    return VAR_REF.sub(lambda m: env.get(m.group(1), m.group(0)), value)


def wheel_files() -> list[str]:
    """The files `pip wheel .` puts in the wheel (modules and package data), relative to the repository, as
    setuptools computes them from pyproject.toml: no build, no network, nothing written into the checkout."""
    from setuptools.config.pyprojecttoml import apply_configuration
    from setuptools.dist import Distribution

    cwd = os.getcwd()
    os.chdir(ROOT)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # setuptools calls [tool.setuptools] "beta"
            dist = Distribution({"script_name": "setup.py"})
            apply_configuration(dist, "pyproject.toml")
            dist.include_package_data = False  # package-data only: an egg-info would be written into the checkout
            build_py = dist.get_command_obj("build_py")
            build_py.ensure_finalized()
            modules = [path for _, _, path in build_py.find_all_modules()]
            data = [str(Path(src) / f) for _, src, _, files in build_py.data_files for f in files]
    finally:
        os.chdir(cwd)
    return modules + data
