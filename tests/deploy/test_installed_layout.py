"""The server as the image runs it: the wheel's files alone on the path (no checkout beside them), static files
collected into STATIC_ROOT the way docker/Dockerfile's build stage does, and `python -m django` as the entrypoint."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from tests.deploy.manifests import ROOT, wheel_files

PAGES = """
import django
django.setup()
from django.test import Client
c = Client()
for url in ("/accounts/login/", "/static/vendor/plotly.min.js", "/static/switchyard/live.js",
            "/static/admin/css/base.css"):
    print(url, c.get(url).status_code)
"""


@pytest.fixture(scope="module")
def installed(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, dict[str, str]]:
    site, var = tmp_path_factory.mktemp("site"), tmp_path_factory.mktemp("var")
    for rel in wheel_files():
        (site / rel).parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(ROOT / rel, site / rel)
    # Nothing here reads the database or Redis; unreachable URLs keep settings from starting embedded servers.
    env = {**os.environ, "SWITCHYARD_VAR_DIR": str(var), "SWITCHYARD_SECRET_KEY": "installed-layout-test",
           "DJANGO_SETTINGS_MODULE": "dashboard.settings", "PYTHONDONTWRITEBYTECODE": "1",
           "SWITCHYARD_DATABASE_URL": "postgresql://nobody@127.0.0.1:1/none", "SWITCHYARD_REDIS_URL": "redis://127.0.0.1:1/0"}
    env.pop("PYTHONPATH", None)
    # The build stage: manage.py from the checkout, so that static/ is found and collected into STATIC_ROOT.
    subprocess.run([sys.executable, "manage.py", "collectstatic", "--noinput", "--verbosity", "0"], cwd=ROOT,
                   env={**env, "PYTHONPATH": str(ROOT)}, check=True, timeout=120)
    return site, {**env, "PYTHONPATH": str(site)}


def run(installed: tuple[Path, dict[str, str]], *argv: str) -> subprocess.CompletedProcess[str]:
    site, env = installed
    # cwd away from the checkout, so that nothing but the wheel's files can be imported.
    return subprocess.run([sys.executable, *argv], cwd=site.parent, env=env, capture_output=True, text=True,
                          timeout=120)


def test_the_installed_package_is_the_one_imported(installed: tuple[Path, dict[str, str]]) -> None:
    out = run(installed, "-c", "import dashboard, control, agents; print(dashboard.__file__)")
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == str(installed[0] / "dashboard" / "__init__.py")


def test_pages_and_static_files_are_served_from_the_installed_package(installed: tuple[Path, dict[str, str]]) -> None:
    out = run(installed, "-c", PAGES)
    assert out.returncode == 0, out.stderr[-2000:]
    assert out.stdout.split("\n")[:4] == ["/accounts/login/ 200", "/static/vendor/plotly.min.js 200",
                                          "/static/switchyard/live.js 200", "/static/admin/css/base.css 200"]


def test_management_commands_run_through_the_entrypoint_without_warnings(
        installed: tuple[Path, dict[str, str]]) -> None:
    out = run(installed, "-m", "django", "check")
    assert out.returncode == 0, out.stderr
    assert "System check identified no issues" in out.stdout, out.stdout + out.stderr
    listing = run(installed, "-m", "django", "help", "--commands")
    assert {"serve", "gateway", "controller", "createnode", "createuser", "migrate", "setprovider"} <= \
        set(listing.stdout.split())
