"""Imports run one way (core/__init__.py): every module, function-level imports included, is held to its layer.

    agents      the node agent: imports nothing of the server (it installs alone on a GPU host)
    core        audit, roles, token secrets, the API's error format, embedded services: imports nothing above
    base        dashboard.accounts, dashboard.fleet, dashboard.metrics: imports core
    control     policies, scheduler, controller, alerts, webhooks, jobs ...: imports core and base
    top         the pages (dashboard.live) and the project (settings, urls, asgi, celery, `demo`): anything

A cycle between the dashboard and the control plane used to be dodged with imports inside functions; this test makes
the direction a rule, so it cannot come back one import at a time.
"""

from __future__ import annotations

import ast
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
BASE = ("dashboard.accounts", "dashboard.fleet", "dashboard.metrics")
RANKS = {"agents": 0, "core": 1, "base": 2, "control": 3, "top": 4}


def layer(module: str) -> str | None:
    top = module.split(".")[0]
    if top in ("agents", "core", "control"):
        return top
    if top == "dashboard":
        return "base" if any(module == b or module.startswith(b + ".") for b in BASE) else "top"
    return None


def module_name(path: Path) -> str:
    parts = path.relative_to(ROOT).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def imports(path: Path) -> list[tuple[int, str]]:
    found = []
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            found += [(node.lineno, node.module)] + [(node.lineno, f"{node.module}.{a.name}") for a in node.names
                                                     if node.module in ("dashboard", "control", "core")]
        elif isinstance(node, ast.Import):
            found += [(node.lineno, a.name) for a in node.names]
    return found


def test_every_import_points_down_or_sideways() -> None:
    wrong = []
    for package in ("agents", "core", "dashboard", "control"):
        for path in (ROOT / package).rglob("*.py"):
            mine = layer(module_name(path))
            assert mine is not None
            for line, target in imports(path):
                theirs = layer(target)
                if theirs is None or (theirs == mine and mine != "agents"):
                    continue
                if RANKS[theirs] > RANKS[mine] or (mine == "agents" and theirs != "agents"):
                    wrong.append(f"{path.relative_to(ROOT)}:{line}: {mine} imports {target} ({theirs})")
    assert wrong == [], "imports against the layers (see this file's docstring):\n" + "\n".join(wrong)


def test_the_rule_catches_what_it_is_meant_to() -> None:
    assert layer("dashboard.fleet.models") == "base" and layer("dashboard.live.frames") == "top"
    assert layer("dashboard") == "top" and layer("core.audit.record") == "core"
    assert RANKS[layer("control.policy.service")] > RANKS[layer("dashboard.metrics.latest")]
