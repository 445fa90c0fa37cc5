"""The OpenAPI schema generates without a single warning (clashing component names, untyped fields...)."""

from __future__ import annotations

from pathlib import Path

from django.core.management import call_command


def test_the_schema_has_no_warnings_and_validates(tmp_path: Path) -> None:
    # --fail-on-warn turns every drf-spectacular warning (e.g. two serializers both named ReasonIn, which made
    # one of them silently describe the other's body) into an error.
    out = tmp_path / "schema.yml"
    call_command("spectacular", "--fail-on-warn", "--validate", "--file", str(out))
    text = out.read_text()
    assert text.count("    ReasonIn:") == 1
