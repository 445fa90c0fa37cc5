"""gateway [--host H] [--port P] [--id ID] [--auth required|off]: the OpenAI-compatible gateway under uvicorn."""

from __future__ import annotations

import socket
from typing import Any

from django.core.management.base import BaseCommand, CommandError, CommandParser


class Command(BaseCommand):
    help = ("Run the Switchyard gateway: an OpenAI-compatible proxy (POST /v1/chat/completions, /v1/completions, "
            "GET /v1/models, /healthz, /metrics) that sends each request to the best node by the active scheduler "
            "policy, with priorities, load shedding, retries, quarantine and an answer cache. One process per "
            "gateway: run several with distinct --id behind a load balancer to scale out.")

    def add_arguments(self, parser: CommandParser) -> None:
        parser.add_argument("--host", default="127.0.0.1", help="address to bind (default 127.0.0.1)")
        parser.add_argument("--port", type=int, default=8400, help="port (default 8400)")
        parser.add_argument("--id", dest="gateway_id", default="",
                            help="this gateway's name in sy:reqlog and sy:gw:state:<id> (default hostname:port)")
        parser.add_argument("--auth", choices=["required", "off"], default="required",
                            help="required (default): a Switchyard API token or the internal token on every "
                                 "request; off: no authentication (trusted networks and benchmarks only)")
        parser.add_argument("--max-body-mb", type=float, default=8.0,
                            help="largest request body accepted, in MiB (default 8); larger ones get 413")
        parser.add_argument("--kv-events", default=None, metavar="ZMQ",
                            help="where the engines' KV-cache events arrive, for precise prefix routing "
                                 "(prefix.source kv_events): comma-separated ZMQ addresses, e.g. tcp://*:5557 "
                                 "(bound; the engines connect) (default: $SWITCHYARD_GATEWAY_KV_EVENTS, else none)")
        parser.add_argument("--log-level", default="warning", choices=["debug", "info", "warning", "error"],
                            help="log level (default warning; access logs at info)")

    def handle(self, *args: Any, **opts: Any) -> None:
        import uvicorn

        from control.scheduler.gateway import Gateway

        if not 0 < opts["port"] < 65536:
            raise CommandError(f"--port {opts['port']} is not a TCP port (1-65535)")
        if opts["max_body_mb"] <= 0:
            raise CommandError("--max-body-mb must be positive")
        gateway_id = opts["gateway_id"] or f"{socket.gethostname()}:{opts['port']}"
        try:
            app = Gateway(gateway_id, auth_required=opts["auth"] == "required",
                          max_body_bytes=int(opts["max_body_mb"] * 1024 * 1024), kv_events=opts["kv_events"])
        except ValueError as exc:
            raise CommandError(str(exc)) from exc
        self.stdout.write(f"Switchyard gateway {gateway_id} on http://{opts['host']}:{opts['port']}/ "
                          f"(auth {opts['auth']})")
        self.stdout.flush()
        uvicorn.run(app, host=opts["host"], port=opts["port"], lifespan="on", log_level=opts["log_level"],
                    access_log=opts["log_level"] in ("debug", "info"), timeout_keep_alive=75, backlog=4096)
