"""createnode, createuser and demo's own checks: tokens on the last line, stored hashed, bad input refused with a
reason."""

from __future__ import annotations

from io import StringIO

import pytest
from django.contrib.auth import get_user_model
from django.core.management import call_command
from django.core.management.base import CommandError

from core.roles import role_of
from core.tokens import digest
from dashboard.accounts.models import UserToken
from dashboard.fleet.models import Node, NodeToken, Pool

pytestmark = pytest.mark.django_db


def run(*args: str) -> list[str]:
    out = StringIO()
    call_command(*args, stdout=out)
    return out.getvalue().strip().splitlines()


def test_createnode_prints_the_token_last_and_stores_only_its_hash() -> None:
    lines = run("createnode", "gpu-a-1", "--pool", "pool-a")
    token = lines[-1]
    assert token.startswith("sy_node_") and len(token) > 40
    assert Pool.objects.filter(name="pool-a").exists()
    stored = NodeToken.objects.get(node__name="gpu-a-1")
    assert stored.digest == digest(token) and token not in (stored.digest, stored.prefix)
    assert token.startswith(stored.prefix)


@pytest.mark.parametrize("name", ["GPU_A", "bad-", "a" * 64, "has space", "../etc", ""])
def test_createnode_refuses_bad_names(name: str) -> None:
    with pytest.raises(CommandError, match="NAME"):
        run("createnode", name, "--pool", "pool-a")
    assert not Node.objects.exists() and not Pool.objects.exists()


def test_createnode_refuses_an_existing_node_without_rotate_and_a_pool_move() -> None:
    run("createnode", "gpu-a-1", "--pool", "pool-a")
    with pytest.raises(CommandError, match="--rotate"):
        run("createnode", "gpu-a-1", "--pool", "pool-a")
    with pytest.raises(CommandError, match="is in pool 'pool-a'"):
        run("createnode", "gpu-a-1", "--pool", "pool-b", "--rotate")
    assert NodeToken.objects.filter(revoked__isnull=True).count() == 1


def test_createuser_roles_and_token() -> None:
    lines = run("createuser", "opal", "--role", "operator", "--password", "s3cret-enough-pass")
    user = get_user_model().objects.get(username="opal")
    assert role_of(user) == "operator" and not user.is_staff
    assert UserToken.objects.get(user=user).digest == digest(lines[-1])
    run("createuser", "opal", "--role", "admin")
    user.refresh_from_db()
    assert role_of(user) == "admin" and user.is_superuser
    assert user.check_password("s3cret-enough-pass")  # not reset by a role change
    with pytest.raises(CommandError):
        run("createuser", "x", "--role", "root")


@pytest.mark.parametrize(("flags", "message"), [
    (["--port", "8601", "--gateway-port", "8601"], "must differ"),
    (["--gateway-port", "70000"], "--gateway-port 70000 is not a TCP port"),
    (["--load-rate", "0"], "--load-rate must be above 0"),
    (["--day-seconds", "5"], "--day-seconds must be between"),
    (["--nodes", "0"], "--nodes must be between 1 and 200"),
])
def test_demo_refuses_bad_flags_before_starting_anything(flags: list[str], message: str) -> None:
    with pytest.raises(CommandError, match=message):
        call_command("demo", *flags)


def test_demo_load_user_gets_a_fresh_standard_token_and_the_old_one_is_revoked() -> None:
    from dashboard.management.commands.demo import Command as Demo

    first = Demo().seed_load_user()
    second = Demo().seed_load_user()
    assert first != second and second.startswith("sy_user_")
    tokens = {t.digest: t for t in UserToken.objects.filter(user__username="loadgen")}
    assert tokens[digest(first)].revoked is not None
    assert tokens[digest(second)].revoked is None and tokens[digest(second)].priority_class == "standard"
    assert role_of(get_user_model().objects.get(username="loadgen")) == "viewer"
