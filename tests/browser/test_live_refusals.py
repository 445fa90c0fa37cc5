"""A page whose live websocket is refused says why and what to do: session ended (4401), role missing (4403), or
this address not allowed as an origin (4400); live.js stops retrying on each (docs/live.md, close codes)."""

from __future__ import annotations

import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

from django.contrib.auth import get_user_model
from django.contrib.auth.models import Group

from tests.browser.conftest import ROOT, Server, login, screenshot

BANNER = "#live-banner"
LIVE_JS = (ROOT / "static" / "switchyard" / "live.js").read_text()
DROP_SOCKET = "() => { const l = SwitchyardLive.connect(); l.ws.close(4000, 'test'); }"


def wait_open(page: Any) -> None:
    page.wait_for_function("document.documentElement.dataset.live === 'open'", timeout=15_000)
    assert page.locator(BANNER).is_hidden()


def test_a_session_that_ended_says_log_in_again(page: Any, server: Server) -> None:
    login(page, server, "vera", "viewer")
    page.goto(f"{server.url}/heatmap/")
    wait_open(page)
    page.context.clear_cookies()  # the session is gone, as after a logout in another tab
    page.evaluate(DROP_SOCKET)  # the next handshake carries no session
    page.wait_for_function("document.documentElement.dataset.live === 'logged-out'", timeout=15_000)
    text = page.inner_text(BANNER)
    assert "not logged in any more" in text and "Log in again" in text
    assert page.get_attribute(f"{BANNER} a", "href") == "/accounts/login/?next=%2Fheatmap%2F"
    assert page.get_attribute(BANNER, "data-status") == "logged-out"


def test_a_user_who_lost_the_viewer_role_is_told_which_role_is_needed(page: Any, server: Server) -> None:
    login(page, server, "vera", "viewer")
    page.goto(f"{server.url}/")
    wait_open(page)
    get_user_model().objects.get(username="vera").groups.remove(Group.objects.get(name="viewer"))
    page.evaluate(DROP_SOCKET)
    page.wait_for_function("document.documentElement.dataset.live === 'forbidden'", timeout=15_000)
    text = page.inner_text(BANNER)
    assert "role (viewer) may not watch live data" in text  # the role the page was rendered with
    assert "manage.py createuser NAME --role viewer" in text
    screenshot(page, "live-refused-role")


def test_a_page_on_a_foreign_address_is_told_to_allow_the_host(page: Any, server: Server) -> None:
    """A page served from another origin (a real HTTP server on 127.0.0.2, a loopback address missing from
    ALLOWED_HOSTS) opens the real server's websocket: the server refuses the origin with 4400 and the banner names
    the host to add. (Loopback, because Chromium blocks public pages from reaching loopback before any handshake.)"""
    html = f"""<!doctype html><html><body>
      <div id="live-banner" hidden data-role="viewer" data-login="/accounts/login/"></div>
      <script>{LIVE_JS}</script>
      <script>SwitchyardLive.connect({{url: "ws://127.0.0.1:{server.port}/ws/fleet/"}});</script>
    </body></html>""".encode()

    class Page(BaseHTTPRequestHandler):
        def do_GET(self) -> None:  # noqa: N802 (the stdlib's name)
            self.send_response(200)
            self.send_header("Content-Type", "text/html")
            self.send_header("Content-Length", str(len(html)))
            self.end_headers()
            self.wfile.write(html)

        def log_message(self, *args: Any) -> None:
            pass

    other = ThreadingHTTPServer(("127.0.0.2", 0), Page)
    threading.Thread(target=other.serve_forever, daemon=True).start()
    try:
        origin = f"http://127.0.0.2:{other.server_address[1]}"
        page.goto(f"{origin}/board")
        page.wait_for_function("document.documentElement.dataset.live === 'origin-refused'", timeout=15_000)
        text = page.inner_text(BANNER)
        assert f"does not accept websockets from this page's address ({origin})" in text
        assert "Add 127.0.0.2 to SWITCHYARD_ALLOWED_HOSTS" in text
        # It stopped: no reconnect loop against a refusal that cannot change by itself.
        page.wait_for_timeout(1500)
        assert page.evaluate("document.documentElement.dataset.live") == "origin-refused"
    finally:
        other.shutdown()
        other.server_close()
