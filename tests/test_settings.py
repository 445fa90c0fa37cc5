"""Settings: secure defaults, URL parsing, and a README that documents every SWITCHYARD_* variable."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from dashboard.settings import database_from_url

ROOT = Path(__file__).resolve().parent.parent


def test_every_variable_in_the_code_is_in_the_readme_table() -> None:
    code = "\n".join(p.read_text() for d in ("dashboard", "agents", "control") for p in (ROOT / d).rglob("*.py"))
    used = set(re.findall(r"SWITCHYARD_[A-Z0-9_]+", code))
    used |= {f"SWITCHYARD_{n}" for n in re.findall(r'env(?:_int|_bool|_list)?\("([A-Z0-9_]+)"', code)}
    readme = (ROOT / "README.md").read_text()
    table = set(re.findall(r"`(SWITCHYARD_[A-Z0-9_]+)`", readme))
    assert used - table == set(), "document these in README's configuration table"


def test_debug_is_off_by_default(settings: object) -> None:
    from django.conf import settings as live

    assert live.DEBUG is False
    assert live.SECRET_KEY and len(live.SECRET_KEY) >= 40


def test_database_url_parsing() -> None:
    db = database_from_url("postgresql://sy:p%40ss@db.internal:6543/fleet?sslmode=require")
    assert (db["USER"], db["PASSWORD"], db["HOST"], db["PORT"], db["NAME"]) == (
        "sy", "p@ss", "db.internal", "6543", "fleet")
    assert db["OPTIONS"] == {"sslmode": "require"}
    sock = database_from_url("postgresql://postgres:@/switchyard?host=/tmp/pg")
    assert sock["HOST"] == "/tmp/pg" and sock["OPTIONS"] == {}
    with pytest.raises(ValueError, match="postgresql://"):
        database_from_url("mysql://root@localhost/db")


@pytest.mark.django_db
def test_no_model_change_lacks_a_migration() -> None:
    from django.core.management import call_command

    call_command("makemigrations", "--check", "--dry-run", verbosity=0)
