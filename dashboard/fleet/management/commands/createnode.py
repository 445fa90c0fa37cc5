"""createnode NAME --pool POOL [--rotate]: prints the node's agent token alone on the last line of stdout."""

from __future__ import annotations

from typing import Any

from django.core.exceptions import ValidationError
from django.core.management.base import BaseCommand, CommandError, CommandParser
from django.db import transaction
from django.utils import timezone

from core.audit.context import Origin
from core.audit.record import record
from core.tokens import display_prefix, new_token
from dashboard.fleet.models import NAME_RE, Node, NodeToken, Pool
from dashboard.fleet.revocation import announce_revocation


class Command(BaseCommand):
    help = (
        "Register a node (and its pool if new) and issue the token its agent pushes with. The token is printed "
        "alone on the last line of stdout and stored only hashed: pass it to `python -m agents --token`. "
        "With --rotate, an existing node gets a new token and its old tokens stop working at once."
    )

    def add_arguments(self, parser: CommandParser) -> None:
        parser.add_argument("name", help="node name (lowercase letters, digits, '.', '_', '-'; 1-63 chars)")
        parser.add_argument("--pool", required=True, help="pool the node belongs to; created if it does not exist")
        parser.add_argument("--rotate", action="store_true", help="issue a new token and revoke the node's old ones")
        parser.add_argument("--endpoint", default="", help="base URL of the node's inference server (optional)")
        parser.add_argument("--reason", default="manage.py createnode", help="why (kept in the audit log)")

    @transaction.atomic
    def handle(self, *args: Any, **opts: Any) -> None:
        name, pool_name = opts["name"], opts["pool"]
        for label, value in (("NAME", name), ("--pool", pool_name)):
            try:
                NAME_RE(value)
            except ValidationError as exc:
                raise CommandError(f"{label} {value!r}: {exc.messages[0]}") from exc
        origin, reason = Origin.command("createnode"), opts["reason"].strip() or "manage.py createnode"
        pool, _ = Pool.objects.get_or_create(name=pool_name)
        node = Node.objects.filter(name=name).first()
        if node is not None and not opts["rotate"]:
            raise CommandError(
                f"node {name!r} already exists (pool {node.pool.name}); use --rotate to issue it a new token"
            )
        if node is None:
            node = Node.objects.create(name=name, pool=pool, endpoint=opts["endpoint"])
            record(origin, "node.create", f"node:{name}", reason, after={"pool": pool.name, "endpoint": node.endpoint})
            self.stdout.write(f"Created node {name!r} in pool {pool.name!r}.")
        else:
            if node.pool_id != pool.id:
                raise CommandError(f"node {name!r} is in pool {node.pool.name!r}, not {pool.name!r}")
            live = list(NodeToken.objects.filter(node=node, revoked__isnull=True).values_list("prefix", "digest"))
            old = [prefix for prefix, _ in live]
            revoked = NodeToken.objects.filter(node=node, revoked__isnull=True).update(revoked=timezone.now())
            # A queryset update sends no signal: announce it, so every ingest worker refuses the old token at once.
            announce_revocation(*(dig for _, dig in live))
            record(origin, "node.token.revoke", f"node:{name}", reason, before={"tokens": old},
                   after={"tokens": []}, details={"revoked": revoked})
            self.stdout.write(f"Revoked {revoked} old token(s) of node {name!r}.")
        plain, dig = new_token("node")
        token = NodeToken.objects.create(node=node, prefix=display_prefix(plain), digest=dig)
        record(origin, "node.token.create", f"node:{name}", reason, after={"prefix": token.prefix},
               details={"token": token.pk})
        self.stdout.write("Agent token (shown once, stored hashed):")
        self.stdout.write(plain)
