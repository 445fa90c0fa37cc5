"""The stdlib verify helper receivers copy: good signatures pass, replays and forgeries are refused."""

from __future__ import annotations

import pytest

from control.webhooks.verify import SignatureError, sign, verify

BODY = b'{"version":"4"}'


def test_a_fresh_signature_verifies() -> None:
    header = sign("k" * 20, BODY, t=1_800_000_000)
    assert verify("k" * 20, header, BODY, now=1_800_000_010) == 1_800_000_000


def test_a_replay_older_than_five_minutes_is_refused() -> None:
    header = sign("k" * 20, BODY, t=1_800_000_000)
    assert verify("k" * 20, header, BODY, now=1_800_000_300)  # exactly at the limit: still fine
    with pytest.raises(SignatureError, match="301 s from now .* replay refused"):
        verify("k" * 20, header, BODY, now=1_800_000_301)


def test_a_timestamp_from_the_future_is_refused_too() -> None:
    with pytest.raises(SignatureError, match="replay refused"):
        verify("k" * 20, sign("k" * 20, BODY, t=1_800_001_000), BODY, now=1_800_000_000)


def test_changing_the_timestamp_breaks_the_signature() -> None:
    header = sign("k" * 20, BODY, t=1_800_000_000).replace("t=1800000000", "t=1800000100")
    with pytest.raises(SignatureError, match="does not match"):
        verify("k" * 20, header, BODY, now=1_800_000_100)


@pytest.mark.parametrize(("header", "message"), [
    (None, "missing"), ("", "missing"), ("garbage", "malformed"), ("t=abc,v1=00", "no integer t="),
    ("t=1800000000", "no v1="),
])
def test_malformed_headers_say_what_is_wrong(header: str | None, message: str) -> None:
    with pytest.raises(SignatureError, match=message):
        verify("k" * 20, header, BODY, now=1_800_000_000)


def test_any_of_several_v1_values_may_match_during_secret_rotation() -> None:
    good = sign("new-secret-0123456", BODY, t=1_800_000_000)
    header = f"t=1800000000,v1={'0' * 64},{good.split(',')[1]}"
    assert verify("new-secret-0123456", header, BODY, now=1_800_000_000)


def test_the_helper_imports_nothing_outside_the_standard_library() -> None:
    import ast
    import sys
    from pathlib import Path

    import control.webhooks.verify as mod

    tree = ast.parse(Path(mod.__file__).read_text())
    names = {a.name.split(".")[0] for n in ast.walk(tree) if isinstance(n, ast.Import) for a in n.names}
    names |= {n.module.split(".")[0] for n in ast.walk(tree) if isinstance(n, ast.ImportFrom) and n.module}
    assert names - {"__future__"} <= set(sys.stdlib_module_names)
