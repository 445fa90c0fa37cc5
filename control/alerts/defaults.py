"""The default `alerts` policy document (revision 1 for a new installation)."""

from __future__ import annotations

from typing import Any

DEFAULT_ALERTS: dict[str, Any] = {"rules": []}
