"""A missing Chromium fails the browser tests in CI and is skipped loudly elsewhere (tests/conftest.py)."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
# Two browser test files: one under tests/browser/ (marked by path), one elsewhere (marked in its module).
TARGETS = ["tests/browser/test_login.py", "tests/routing/test_routing_browser.py"]


def run(ci: str | None) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if k != "CI"}
    env["CHROMIUM"] = str(ROOT / "no-such-chromium")
    if ci is not None:
        env["CI"] = ci
    return subprocess.run([sys.executable, "-m", "pytest", "-o", "addopts=", "-p", "no:cacheprovider", "-q", *TARGETS], cwd=ROOT,
                          env=env, capture_output=True, text=True, timeout=300)


def test_in_ci_a_missing_browser_fails_the_run() -> None:
    result = run("true")
    assert result.returncode != 0, result.stdout[-2000:]
    assert "not found and CI=true: browser tests must run in CI" in result.stdout
    assert "browser tests FAILED (CI=true)" in result.stdout and "apt-get install -y chromium" in result.stdout
    assert " passed" not in result.stdout.splitlines()[-1]


def test_on_a_laptop_the_skip_passes_but_says_so_in_one_line() -> None:
    result = run(None)
    assert result.returncode == 0, result.stdout[-2000:]
    [line] = [ln for ln in result.stdout.splitlines() if ln.startswith("!! ")]
    count = int(line.split()[1])
    assert count >= 2 and "browser tests were SKIPPED" in line and "apt-get install -y chromium" in line
    assert f"{count} skipped" in result.stdout
