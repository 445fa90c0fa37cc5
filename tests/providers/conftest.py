"""Helpers of the provider tests: every provider is driven over real HTTP (a simulated fleet, moto's server,
local fakes of the Kubernetes and Azure APIs) on free ports."""

from __future__ import annotations

import socket
import time
from collections.abc import Callable, Iterator

import pytest

from control.providers.base import ProviderError


def wait_until(check: Callable[[], bool], timeout_s: float = 10.0, what: str = "the condition") -> None:
    deadline = time.monotonic() + timeout_s
    while not check():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.05)


def closed_port_url(scheme: str = "http") -> str:
    """A URL where nothing listens (connection refused)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return f"{scheme}://127.0.0.1:{s.getsockname()[1]}"


@pytest.fixture
def silent_url() -> Iterator[str]:
    """A URL that accepts connections and never answers (a hung server): calls must time out."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        s.listen(16)
        yield f"http://127.0.0.1:{s.getsockname()[1]}"


def provider_error(fn: Callable[[], object]) -> ProviderError:
    with pytest.raises(ProviderError) as info:
        fn()
    return info.value


def without_hanging(fn: Callable[[], object], limit_s: float = 60.0) -> object:
    """Run `fn` and return what it returns or raises; fail if it has not returned after `limit_s` (a call with no
    timeout against a hung server would never return). Not a speed check: the limit is far above any timeout used."""
    import threading

    box: dict[str, object] = {}

    def run() -> None:
        try:
            box["value"] = fn()
        except BaseException as exc:  # noqa: BLE001 - handed back to the caller
            box["error"] = exc

    t = threading.Thread(target=run, daemon=True)
    t.start()
    t.join(limit_s)
    assert not t.is_alive(), f"the call did not return within {limit_s} s: is its timeout applied?"
    if "error" in box:
        raise box["error"]  # type: ignore[misc]
    return box.get("value")
