"""docker/: what can be checked without a container engine. The Dockerfile builds from this repository's wheel,
copies only what exists and is in the build context, ships no compiler, runs as a non-root uid, and its entrypoint
runs management commands; the compose file's services run real commands, with pinned images and no literal secret.
(Building and running the images needs a Docker engine; docs/deploy.md says what was not exercised.)
"""

from __future__ import annotations

import fnmatch
import json
import re
import shlex
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
import yaml

from tests.deploy.manifests import (
    DOCKER,
    ROOT,
    SERVER_ENTRYPOINT,
    VERSION,
    check_management_command,
    invocation,
    wheel_files,
)

COMPILERS = ("build-essential", "gcc", "g++", "clang", "make", "cmake", "cc", "rustc", "cargo", "gfortran")
PINNED_TAG = re.compile(r"^[\w.-]+(/[\w.-]+)*:(\d+\.\d+(\.\d+)?)([-.][\w.-]+)?(@sha256:[0-9a-f]{64})?$")


@dataclass
class Stage:
    name: str
    base: str
    instructions: list[tuple[str, str]] = field(default_factory=list)

    def all(self, keyword: str) -> list[str]:
        return [arg for kw, arg in self.instructions if kw == keyword]


def parse_dockerfile(text: str) -> tuple[dict[str, str], list[Stage]]:
    """Global ARGs and the stages of a Dockerfile: continuation lines joined, comments dropped."""
    logical: list[str] = []
    pending = ""
    for raw in text.splitlines():
        line = raw.strip()
        if not line or line.startswith("#"):
            continue
        if line.endswith("\\"):
            pending += line[:-1] + " "
            continue
        logical.append(pending + line)
        pending = ""
    args: dict[str, str] = {}
    stages: list[Stage] = []
    for line in logical:
        keyword, _, rest = line.partition(" ")
        keyword, rest = keyword.upper(), rest.strip()
        if keyword == "ARG" and not stages:
            name, _, default = rest.partition("=")
            args[name] = default
        elif keyword == "FROM":
            words = rest.split()
            base = re.sub(r"\$\{(\w+)\}", lambda m: args[m.group(1)], words[0])
            name = words[2] if len(words) == 3 and words[1].upper() == "AS" else str(len(stages))
            stages.append(Stage(name, base))
        else:
            stages[-1].instructions.append((keyword, rest))
    return args, stages


@pytest.fixture(scope="module")
def dockerfile() -> tuple[dict[str, str], list[Stage]]:
    return parse_dockerfile((DOCKER / "Dockerfile").read_text())


def stage(stages: list[Stage], name: str) -> Stage:
    return next(s for s in stages if s.name == name)


def lineage(stages: list[Stage], name: str) -> list[Stage]:
    """The stage and the stages it is built FROM, nearest first."""
    out = [stage(stages, name)]
    while any(s.name == out[-1].base for s in stages):
        out.append(stage(stages, out[-1].base))
    return out


def dockerignore() -> list[str]:
    lines = (ROOT / ".dockerignore").read_text().splitlines()
    return [ln.strip() for ln in lines if ln.strip() and not ln.startswith("#")]


def ignored(path: str, patterns: list[str]) -> bool:
    """Docker's .dockerignore matching, for the plain patterns used here (no `!` exceptions)."""
    parts = Path(path).parts
    for pattern in patterns:
        pattern = pattern.rstrip("/")
        for i in range(1, len(parts) + 1):
            prefix = "/".join(parts[:i])
            if fnmatch.fnmatch(prefix, pattern) or (pattern.startswith("**/") and
                                                    fnmatch.fnmatch(parts[i - 1], pattern[3:])):
                return True
    return False


def exec_form(arg: str) -> list[str]:
    return json.loads(arg) if arg.startswith("[") else shlex.split(arg)


# --- the Dockerfile -------------------------------------------------------------------------------------------------
def test_every_copy_source_exists_and_is_in_the_build_context(dockerfile: tuple[dict[str, str], list[Stage]]) -> None:
    _, stages = dockerfile
    patterns = dockerignore()
    copied = []
    for s in stages:
        for arg in s.all("COPY"):
            words = [w for w in shlex.split(arg) if not w.startswith("--")]
            if any(w.startswith("--from") for w in shlex.split(arg)):
                continue
            for source in words[:-1]:
                assert (ROOT / source).exists(), f"COPY {source}: no such file in the repository"
                assert not ignored(source, patterns), f"COPY {source}: excluded by .dockerignore"
                copied.append(source)
    # Every package pyproject.toml ships must be in the context, or the wheel built from it lacks that package.
    import tomllib

    include = tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["setuptools"]["packages"]["find"]["include"]
    packages = {pattern.rstrip("*") for pattern in include}
    assert packages == {"agents", "core", "control", "dashboard"}
    assert {"pyproject.toml", "static", *packages} <= set(copied), f"not copied: {packages - set(copied)}"


def test_the_images_install_this_repository_from_its_wheel(dockerfile: tuple[dict[str, str], list[Stage]]) -> None:
    _, stages = dockerfile
    build = " ".join(stage(stages, "build").all("RUN"))
    assert "pip wheel --no-deps --wheel-dir /wheels ." in build
    assert build.count("--no-index --find-links /wheels") == 2  # the server venv and the agent venv
    for final in ("server", "agent"):
        for s in lineage(stages, final):
            for arg in s.all("RUN"):
                assert "pip install" not in arg, f"{s.name} installs outside the wheel-only build stage"


def test_the_final_images_have_no_compiler(dockerfile: tuple[dict[str, str], list[Stage]]) -> None:
    args, stages = dockerfile
    assert stages[-1].name == "server", "the default target is the server image"
    for final in ("server", "agent"):
        chain = lineage(stages, final)
        assert chain[-1].base == args["PYTHON_IMAGE"] and "slim" in chain[-1].base
        assert all(s.name != "build" for s in chain), f"{final} is not built FROM the build stage"
        for s in chain:
            for arg in s.all("RUN"):
                words = set(re.split(r"[\s;&|]+", arg))
                assert not words & set(COMPILERS), f"{s.name} installs a compiler: {arg}"
            for arg in s.all("COPY"):
                if "--from=build" in arg:
                    assert "/opt/switchyard" in arg or "/opt/var/staticfiles" in arg, arg


def test_the_base_image_is_pinned(dockerfile: tuple[dict[str, str], list[Stage]]) -> None:
    args, stages = dockerfile
    assert PINNED_TAG.match(args["PYTHON_IMAGE"]), args["PYTHON_IMAGE"]
    assert not args["PYTHON_IMAGE"].endswith(":latest")
    for s in stages:
        assert s.base in {args["PYTHON_IMAGE"], *(t.name for t in stages)}, s.base


@pytest.mark.parametrize("final", ["server", "agent"])
def test_the_images_run_as_a_numeric_non_root_user(dockerfile: tuple[dict[str, str], list[Stage]], final: str) -> None:
    _, stages = dockerfile
    users = [u for s in reversed(lineage(stages, final)) for u in s.all("USER")]
    assert users, f"{final} sets USER"
    uid = users[-1].split(":")[0]
    assert uid.isdigit() and int(uid) != 0, "numeric, so that Kubernetes' runAsNonRoot can check it"
    runtime = " ".join(stage(stages, "runtime").all("RUN"))
    assert f"--uid {uid}" in runtime


def test_the_server_entrypoint_runs_any_management_command(dockerfile: tuple[dict[str, str], list[Stage]]) -> None:
    _, stages = dockerfile
    server = stage(stages, "server")
    assert exec_form(server.all("ENTRYPOINT")[-1]) == SERVER_ENTRYPOINT
    env = " ".join(server.all("ENV"))
    assert "DJANGO_SETTINGS_MODULE=dashboard.settings" in env
    cmd = exec_form(server.all("CMD")[-1])
    check_management_command(cmd[0], cmd[1:])
    assert cmd[:1] == ["serve"] and cmd[cmd.index("--host") + 1] == "0.0.0.0"
    agent = stage(stages, "agent")
    assert exec_form(agent.all("ENTRYPOINT")[-1]) == ["python", "-m", "agents"]


def test_the_wheel_ships_every_template() -> None:
    shipped = set(wheel_files())
    templates = {str(p.relative_to(ROOT)) for pkg in ("agents", "control", "dashboard")
                 for p in (ROOT / pkg).rglob("templates/**/*.html")}
    assert len(templates) > 20
    assert templates - shipped == set(), "templates missing from the wheel (pyproject.toml package-data)"


# --- .dockerignore --------------------------------------------------------------------------------------------------
def test_the_build_context_leaves_out_state_and_secrets() -> None:
    patterns = dockerignore()
    for path in (".git", ".venv", ".var/secret_key", ".var/pg/base", "tests/conftest.py",
                 "dashboard/__pycache__/x.pyc", "deploy/kubernetes/web.yaml"):
        assert ignored(path, patterns), path
    for path in ("pyproject.toml", "README.md", "manage.py", "dashboard/settings.py", "static/vendor/plotly.min.js"):
        assert not ignored(path, patterns), path


# --- compose --------------------------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def compose() -> dict[str, Any]:
    return yaml.safe_load((DOCKER / "compose.yml").read_text())


def test_compose_runs_postgres_redis_web_two_gateways_and_the_controller(compose: dict[str, Any]) -> None:
    services = compose["services"]
    assert set(services) == {"postgres", "redis", "migrate", "web", "gateway-a", "gateway-b", "controller"}
    ours = {name: s for name, s in services.items() if s.get("image", "").startswith("switchyard:")}
    assert set(ours) == {"migrate", "web", "gateway-a", "gateway-b", "controller"}
    names = {}
    for name, svc in ours.items():
        assert svc["image"] == f"switchyard:{VERSION}"
        assert svc["build"] == {"context": "..", "dockerfile": "docker/Dockerfile", "target": "server"}
        inv = invocation(svc["image"], svc.get("entrypoint"), svc["command"])
        assert inv.program == "manage.py", name
        check_management_command(inv.name, inv.argv)
        names[name] = inv
        for dep in svc.get("depends_on", {}):
            assert dep in services, f"{name} depends on {dep}, which is not a service"
    assert [names[g].argv[names[g].argv.index("--id") + 1] for g in ("gateway-a", "gateway-b")] == \
        ["gateway-a", "gateway-b"], "each gateway has its own id in the shared request log"
    assert names["migrate"].name == "migrate" and names["controller"].name == "controller"
    for name in ("web", "gateway-a", "gateway-b", "controller"):
        assert services[name]["depends_on"]["migrate"] == {"condition": "service_completed_successfully"}


def test_compose_health_checks_probe_each_service_on_its_own_port(compose: dict[str, Any]) -> None:
    for name in ("web", "gateway-a", "gateway-b"):
        svc = compose["services"][name]
        argv = svc["command"]
        port = argv[argv.index("--port") + 1]
        test = " ".join(svc["healthcheck"]["test"])
        assert f"http://127.0.0.1:{port}/healthz" in test, name
        assert argv[argv.index("--host") + 1] == "0.0.0.0"
        assert any(p.endswith(f":{port}") for p in svc["ports"])


def test_compose_images_are_pinned_and_secrets_come_from_the_environment(compose: dict[str, Any]) -> None:
    for name, svc in compose["services"].items():
        assert PINNED_TAG.match(svc["image"]), f"{name}: {svc['image']}"
    text = (DOCKER / "compose.yml").read_text()
    for name, svc in compose["services"].items():
        for key, value in (svc.get("environment") or {}).items():
            if re.search(r"SECRET|PASSWORD|DATABASE_URL", key):
                assert re.search(r"\$\{[A-Z_]+:\?", str(value)), f"{name}.{key} must be required from the env"
    assert "changeme" not in text.lower()


def test_compose_and_dockerfile_agree_on_the_image_layout(compose: dict[str, Any],
                                                          dockerfile: tuple[dict[str, str], list[Stage]]) -> None:
    _, stages = dockerfile
    env = " ".join(stage(stages, "server").all("ENV"))
    var_dir = re.search(r"SWITCHYARD_VAR_DIR=(\S+)", env)
    assert var_dir is not None
    schedule = compose["services"]["controller"]["command"]
    assert schedule[schedule.index("--schedule") + 1].startswith(var_dir.group(1) + "/")
