"""Fixtures: the control tests' per-role users and clients, the scheduler tests' fleet and gateways."""

from __future__ import annotations

from tests.control.conftest import _fast_passwords, api, tokens  # noqa: F401
from tests.scheduler.conftest import fleet, gateway, upstreams, user_token  # noqa: F401
