"""What the local fakes of cloud APIs share (tests/providers/fakes: kubernetes.py, azure.py): a threaded HTTP(S) server on a
free port whose every request goes to the fake's `_handle`, started and stopped as a context manager."""

from __future__ import annotations

import ssl
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from types import TracebackType
from typing import Any, Self


class FakeServer:
    """Subclasses implement `_handle(request)` and set `tls` (certificate, key) to serve HTTPS."""

    tls: tuple[Path, Path] | None = None
    name = "fake"
    _server: ThreadingHTTPServer | None = None

    def _handle(self, request: BaseHTTPRequestHandler) -> None:
        raise NotImplementedError

    def start(self) -> Self:
        fake = self

        class Handler(BaseHTTPRequestHandler):
            def _go(self) -> None:
                fake._handle(self)

            do_GET = do_PATCH = do_POST = do_PUT = do_DELETE = _go  # noqa: N815 - http.server's naming

            def log_message(self, format: str, *args: Any) -> None:  # quiet: tests read `requests` instead
                pass

        server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        server.daemon_threads = True
        if self.tls is not None:
            context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
            context.load_cert_chain(*self.tls)
            server.socket = context.wrap_socket(server.socket, server_side=True)
        self._server = server
        threading.Thread(target=server.serve_forever, args=(0.05,), name=self.name, daemon=True).start()
        return self

    def stop(self) -> None:
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()
            self._server = None

    def __enter__(self) -> Self:
        return self.start()

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        self.stop()

    @property
    def url(self) -> str:
        assert self._server is not None, "start the fake first"
        scheme = "https" if self.tls is not None else "http"
        return f"{scheme}://127.0.0.1:{self._server.server_address[1]}"
