"""serve [--host H] [--port P] [--workers N]: the web app (HTTP + websockets) under uvicorn."""

from __future__ import annotations

from typing import Any

from django.core.management.base import BaseCommand, CommandParser

HTTP_PROTOCOLS = {"ingest": "dashboard.fleet.ingest_protocol:IngestProtocol", "httptools": "httptools"}


class Command(BaseCommand):
    help = ("Run the Switchyard web app (dashboard, REST API, agent ingest, websockets) under uvicorn. "
            "Use --workers 2 or more on a busy fleet: each worker is a process with its own database pool.")

    def add_arguments(self, parser: CommandParser) -> None:
        parser.add_argument("--host", default="127.0.0.1", help="address to bind (default 127.0.0.1)")
        parser.add_argument("--port", type=int, default=8000, help="port (default 8000)")
        parser.add_argument("--workers", type=int, default=1, help="worker processes (default 1)")
        parser.add_argument("--log-level", default="warning", choices=["debug", "info", "warning", "error"],
                            help="uvicorn log level (default warning; access logs at info)")
        parser.add_argument("--http", default="ingest", choices=["ingest", "httptools"],
                            help="HTTP protocol: 'ingest' (default) answers agent pushes straight from the HTTP "
                                 "parser (dashboard/fleet/ingest_protocol.py); 'httptools' is uvicorn's own, every "
                                 "request through ASGI (for comparison)")

    def handle(self, *args: Any, **opts: Any) -> None:
        import uvicorn

        self.stdout.write(f"Switchyard web on http://{opts['host']}:{opts['port']}/ ({opts['workers']} worker(s))")
        uvicorn.run(
            "dashboard.asgi:application",
            host=opts["host"],
            port=opts["port"],
            workers=opts["workers"],
            lifespan="off",  # Django's ASGI handler does not speak the lifespan protocol
            log_level=opts["log_level"],
            access_log=opts["log_level"] in ("debug", "info"),
            # Agents push every few seconds on a kept-alive connection; uvicorn's 5 s default closes it just as
            # the next push is sent, and that push fails with a reset. nginx's 75 s is the usual choice.
            timeout_keep_alive=75,
            backlog=4096,
            http=HTTP_PROTOCOLS[opts["http"]],
        )
