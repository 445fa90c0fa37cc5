"""createuser NAME --role viewer|operator|admin [--password P]: prints the user's API token on the last line."""

from __future__ import annotations

from typing import Any

from django.contrib.auth import get_user_model
from django.core.management.base import BaseCommand, CommandError, CommandParser
from django.db import transaction

from control.tokens.service import UnknownClass, issue
from core.audit.context import Origin
from core.audit.record import record
from core.roles import ROLES, role_of, set_role


class Command(BaseCommand):
    help = (
        "Create a user (or update an existing one's role/password) and issue a new API token. "
        "The token is printed alone on the last line of stdout and is not stored in readable form: keep it."
    )

    def add_arguments(self, parser: CommandParser) -> None:
        parser.add_argument("name", help="login name")
        parser.add_argument("--role", required=True, choices=ROLES, help="viewer (read), operator (act), admin (all)")
        parser.add_argument("--password", help="password for the browser login (omit for an API-only user)")
        parser.add_argument("--email", default="", help="e-mail address (optional)")
        parser.add_argument("--reason", default="manage.py createuser", help="why (kept in the audit log)")
        parser.add_argument("--class", dest="priority_class", default="",
                            help="the most important gateway priority class the token's requests may have (e.g. "
                                 "realtime, batch); default: the priorities policy's default class")

    @transaction.atomic
    def handle(self, *args: Any, **opts: Any) -> None:
        User = get_user_model()
        name: str = opts["name"].strip()
        if not name or len(name) > 150:
            raise CommandError("NAME must be 1-150 characters.")
        origin, reason = Origin.command("createuser"), opts["reason"].strip() or "manage.py createuser"
        user, created = User.objects.get_or_create(username=name, defaults={"email": opts["email"]})
        old_role = None if created else role_of(user)
        if opts["password"]:
            user.set_password(opts["password"])
        elif created:
            user.set_unusable_password()
        user.save()
        set_role(user, opts["role"])
        target = f"user:{name}"
        if created:
            record(origin, "user.create", target, reason, after={"role": opts["role"]})
        elif old_role != opts["role"]:
            record(origin, "user.role", target, reason, before={"role": old_role}, after={"role": opts["role"]})
        if opts["password"] and not created:
            record(origin, "user.password", target, reason)  # that it changed, never what to
        try:
            # Whoever runs manage.py holds the installation's database credentials: an admin by any measure.
            plain = issue(user, "createuser", origin, reason, opts["priority_class"].strip(), by_admin=True)[1]
        except UnknownClass as exc:
            raise CommandError(str(exc)) from None
        verb = "Created" if created else "Updated"
        self.stdout.write(f"{verb} user {name!r} with role {opts['role']}. API token (shown once):")
        self.stdout.write(plain)
