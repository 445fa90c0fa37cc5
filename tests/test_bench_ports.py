"""bench/benchlib.free_port: the benches start several servers on ports picked this way; two calls must never give
the same port, even when the kernel hands the same free port out twice (the first socket is closed before the
caller's server binds it)."""

from __future__ import annotations

from typing import Any

import pytest

from bench import benchlib


def test_free_port_never_returns_a_port_it_already_handed_out(monkeypatch: pytest.MonkeyPatch) -> None:
    offered = iter([41001, 41001, 41001, 41002])

    class FakeSocket:
        def __enter__(self) -> FakeSocket:
            return self

        def __exit__(self, *exc: Any) -> None:
            return None

        def bind(self, addr: tuple[str, int]) -> None:
            self.port = next(offered)

        def getsockname(self) -> tuple[str, int]:
            return ("127.0.0.1", self.port)

    monkeypatch.setattr(benchlib.socket, "socket", FakeSocket)
    monkeypatch.setattr(benchlib, "_HANDED_OUT", set())
    assert benchlib.free_port() == 41001
    assert benchlib.free_port() == 41002  # the kernel offered 41001 twice more: skipped


def test_free_port_gives_a_bindable_port() -> None:
    import socket

    port = benchlib.free_port()
    with socket.socket() as s:
        s.bind(("127.0.0.1", port))
