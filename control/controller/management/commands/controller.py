"""manage.py controller: the controller for a single host (a Celery worker with the beat scheduler inside)."""

from __future__ import annotations

import json
from typing import Any

from django.core.management.base import BaseCommand, CommandParser

from core import embedded


class Command(BaseCommand):
    help = (
        "Run the controller: a Celery worker with beat inside it, which runs every controller loop on schedule "
        "(autoscaling, power caps and the guard every 15 s, forecasts every 5 min, alert evaluation, webhook "
        "delivery, rollups, partitions, retention). Loops take a PostgreSQL advisory lock, so starting two "
        "controllers is safe: one acts, the other waits. For several hosts run `celery -A dashboard worker` on each "
        "and `celery -A dashboard beat` once. With --once it runs one controller tick in this process, prints what "
        "it did as JSON and exits."
    )

    def add_arguments(self, parser: CommandParser) -> None:
        parser.add_argument("--concurrency", type=int, default=2, help="worker processes (default 2)")
        parser.add_argument("--loglevel", default="info", choices=["debug", "info", "warning", "error"],
                            help="Celery log level (default info)")
        parser.add_argument("--schedule", default=None,
                            help="beat's schedule file (default .var/celerybeat-controller)")
        parser.add_argument("--once", action="store_true",
                            help="run one tick (and a forecast refit) now, print the result, exit")

    def handle(self, *args: Any, **opts: Any) -> None:
        if opts["once"]:
            from control.controller import tasks

            result = {"tick": tasks.tick(), "forecast": tasks.forecast()}
            if result["tick"] is None:
                self.stderr.write("another controller holds the lock; nothing done")
            self.stdout.write(json.dumps(result, indent=2, default=str))
            return
        if opts["concurrency"] < 1:
            self.stderr.write("--concurrency must be at least 1")
            raise SystemExit(2)
        from celery import current_app as app  # the project's app (dashboard/celery.py), made current at startup

        schedule = opts["schedule"] or str(embedded.var_dir() / "celerybeat-controller")
        # In this process, so that embedded PostgreSQL/Redis started for it stay up for as long as it runs.
        app.worker_main(["worker", "--beat", "--concurrency", str(opts["concurrency"]), "--loglevel",
                         opts["loglevel"], "--schedule", schedule])
