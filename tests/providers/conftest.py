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
