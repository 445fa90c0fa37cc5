"""Real-browser fixtures: a real `manage.py serve` process on the test database and Debian's chromium via Playwright.

Screenshots land in `artifacts/screenshots/` (git-ignored) so a failing CI run leaves something to look at.
"""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests.conftest import CHROMIUM, free_port, make_user, subprocess_env, wait_for_port

ROOT = Path(__file__).resolve().parents[2]
SCREENSHOTS = ROOT / "artifacts" / "screenshots"
PASSWORD = "correct-horse-battery"

# Every test under tests/browser/ is marked `browser` by tests/conftest.py, which also decides what a missing
# Chromium means (a failure in CI, a loud skip elsewhere).


@dataclass
class Server:
    url: str
    port: int
    proc: subprocess.Popen[bytes]
    log: Path

    def ingest(self, token: str, payload: dict[str, Any]) -> httpx.Response:
        """Push through the real HTTP endpoint, as an agent does."""
        return httpx.post(f"{self.url}/api/v1/ingest", json=payload, headers={"Authorization": f"Bearer {token}"},
                          timeout=10)

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(15)
            except subprocess.TimeoutExpired:
                self.proc.kill()


def start_server(port: int, log: Path) -> Server:
    out = log.open("ab")
    proc = subprocess.Popen(
        [sys.executable, "manage.py", "serve", "--host", "127.0.0.1", "--port", str(port), "--workers", "1",
         "--log-level", "warning"],
        cwd=ROOT, env=subprocess_env(), stdout=out, stderr=subprocess.STDOUT)
    try:
        wait_for_port(port, timeout=60)
    except AssertionError:
        proc.kill()
        raise AssertionError(log.read_text()[-3000:]) from None
    return Server(url=f"http://127.0.0.1:{port}", port=port, proc=proc, log=log)


@pytest.fixture
def server(clean_samples: None, tmp_path: Path) -> Iterator[Server]:
    """`manage.py serve` on the test database (data the test writes is committed, so the server sees it)."""
    srv = start_server(free_port(), tmp_path / "serve.log")
    yield srv
    srv.stop()


@pytest.fixture(scope="module")
def chromium() -> Iterator[Any]:
    from playwright.sync_api import sync_playwright

    # Playwright's sync API keeps an event loop in this thread; Django's ORM then refuses to run unless told it is
    # safe (it is: that loop only drives the browser, never the database). Only for the browser modules.
    os.environ["DJANGO_ALLOW_ASYNC_UNSAFE"] = "true"
    try:
        with sync_playwright() as pw:
            browser = pw.chromium.launch(
                executable_path=CHROMIUM, headless=True,
                args=["--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage"])
            yield browser
            browser.close()
    finally:
        del os.environ["DJANGO_ALLOW_ASYNC_UNSAFE"]


@pytest.fixture
def page(chromium: Any) -> Iterator[Any]:
    context = chromium.new_context(viewport={"width": 1600, "height": 1000})
    pg = context.new_page()
    errors: list[str] = []
    pg.on("pageerror", lambda exc: errors.append(str(exc)))
    pg.js_errors = errors  # type: ignore[attr-defined]
    yield pg
    context.close()


def login(page: Any, server: Server, name: str, role: str = "viewer") -> None:
    make_user(name, role)
    page.goto(f"{server.url}/accounts/login/")
    page.fill("input[name=username]", name)
    page.fill("input[name=password]", PASSWORD)
    page.click("button[type=submit]")
    page.wait_for_url(f"{server.url}/")


def screenshot(page: Any, name: str) -> None:
    SCREENSHOTS.mkdir(parents=True, exist_ok=True)
    page.screenshot(path=str(SCREENSHOTS / f"{name}.png"), full_page=True)
