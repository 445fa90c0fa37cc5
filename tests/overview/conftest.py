"""Fixtures of the overview tests: role clients and the real-browser fixtures."""

from tests.browser.conftest import chromium, page, server  # noqa: F401
from tests.live_pages.conftest import session_as, token_as, viewer  # noqa: F401
