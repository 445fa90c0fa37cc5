"""manage.py setprovider POOL KIND [--set key=value ...]: bind a pool to the provider that scales it (audited)."""

from __future__ import annotations

import importlib
import json
from typing import Any

from django.core.management.base import BaseCommand, CommandError, CommandParser

from control.controller import bindings
from control.providers.registry import KINDS, ConfigError
from core.audit.context import Origin
from dashboard.fleet.models import Pool


def _value(kind: str, key: str, raw: str) -> Any:
    """The typed value: a number where the provider's field is a number, else the string as typed (so that
    `--set namespace=2024` stays the string "2024")."""
    try:
        fields = {f.name: f for f in importlib.import_module(f"control.providers.{kind}").FIELDS}
    except ImportError:
        return raw
    field = fields.get(key)
    if field is not None and field.type == "number":
        try:
            return float(raw)
        except ValueError:
            return raw  # validation names the field and says a number is needed
    return raw


class Command(BaseCommand):
    help = (
        "Set the provider that scales POOL: local (the simulated fleet's control API), kubernetes (a Deployment), "
        "aws (an Auto Scaling group) or azure (a VM scale set). Settings are --set key=value pairs (see "
        "docs/providers.md: e.g. local url=http://127.0.0.1:8399 boot_delay_s=30; kubernetes namespace=... "
        "deployment=...; aws asg=... region=...; azure subscription_id=... resource_group=... vmss=...). "
        "Credentials never go here: they come from the environment. --remove unbinds the pool."
    )

    def add_arguments(self, parser: CommandParser) -> None:
        parser.add_argument("pool", help="the pool's name (created if new)")
        parser.add_argument("kind", nargs="?", choices=KINDS, help="provider kind")
        parser.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="a provider setting")
        parser.add_argument("--disabled", action="store_true", help="bind but do not scale (observe only)")
        parser.add_argument("--remove", action="store_true", help="remove the pool's provider")
        parser.add_argument("--reason", default="set with manage.py setprovider", help="audit reason")

    def handle(self, *args: Any, **opts: Any) -> None:
        origin = Origin.command("setprovider")
        if opts["remove"]:
            removed = bindings.remove_provider(opts["pool"], opts["reason"], origin)
            self.stdout.write(f"{opts['pool']}: provider removed" if removed else f"{opts['pool']}: had no provider")
            return
        if not opts["kind"]:
            raise CommandError(f"give a provider kind: one of {', '.join(KINDS)}")
        config: dict[str, Any] = {}
        for item in opts["set"]:
            key, sep, raw = item.partition("=")
            if not sep or not key.strip():
                raise CommandError(f"--set {item!r}: write KEY=VALUE")
            config[key.strip()] = _value(opts["kind"], key.strip(), raw)
        Pool.objects.get_or_create(name=opts["pool"])
        try:
            b = bindings.set_provider(opts["pool"], opts["kind"], config, not opts["disabled"], opts["reason"], origin)
        except ConfigError as exc:
            raise CommandError("; ".join(f"{k}: {v}" for k, v in exc.fields.items())) from None
        self.stdout.write(f"{b.pool.name}: {b.kind} {json.dumps(b.config, sort_keys=True)}"
                          f"{'' if b.enabled else ' (disabled)'}")
