"""Which providers exist, how their config is checked, and how one is built for a pool.

Validation imports only each provider's package (`control.providers.<kind>`: its FIELDS), never the cloud SDKs, so
that checking a form or an API request stays cheap; `get` imports the provider module itself.
"""

from __future__ import annotations

import importlib
import re
from types import ModuleType
from typing import Any

from control.providers.base import Field, Provider

KINDS = ("local", "kubernetes", "aws", "azure")

# Key names that look like credentials. The config is stored in the database and shown to operators, so a secret
# there would leak; credentials come from the environment or secret files instead (docs/providers.md).
SECRET_WORDS = re.compile(r"passw(or)?d|secret|token|key|credential", re.IGNORECASE)


class ConfigError(ValueError):
    """A provider config that cannot be used; `fields` maps each bad key to what is wrong with it."""

    def __init__(self, fields: dict[str, str]) -> None:
        super().__init__("; ".join(f"{k}: {v}" for k, v in fields.items()))
        self.fields = fields


def _package(kind: str) -> ModuleType:
    if kind not in KINDS:
        raise ConfigError({"kind": f"unknown provider kind {kind!r}; use one of {', '.join(KINDS)}"})
    return importlib.import_module(f"control.providers.{kind}")


def validate_config(kind: str, config: dict[str, Any]) -> dict[str, Any]:
    """The cleaned config (defaults filled in) or ConfigError naming every bad key."""
    package = _package(kind)
    fields: tuple[Field, ...] = package.FIELDS
    if not isinstance(config, dict):
        raise ConfigError({"config": f"must be a JSON object of settings, got {type(config).__name__}"})
    known = {f.name: f for f in fields}
    errors: dict[str, str] = {}
    cleaned: dict[str, Any] = {}
    for key in config:
        if key in known:
            continue
        if not isinstance(key, str):
            errors[str(key)] = "keys must be strings"
        elif SECRET_WORDS.search(key):
            errors[key] = ("looks like a secret: the pool's config is stored in the database and shown to operators, "
                           f"so it must hold none; {package.SECRETS_HINT}")
        else:
            errors[key] = f"unknown key; allowed: {', '.join(known)}"
    for field in fields:
        value = config.get(field.name)
        if value is None or (isinstance(value, str) and not value.strip()):  # a form's empty box means "not set"
            if field.required:
                errors[field.name] = f"required: {field.help}"
            elif field.default is not None:
                cleaned[field.name] = field.default
            continue
        value, problem = field.clean(value)
        if problem:
            errors[field.name] = problem
        else:
            cleaned[field.name] = value
    if errors:
        raise ConfigError(errors)
    return cleaned


def get(kind: str, config: dict[str, Any]) -> Provider:
    """A provider for a pool from its (validated here again) config. Builds no connection: the first call does."""
    cleaned = validate_config(kind, config)
    module = importlib.import_module(f"control.providers.{kind}.provider")
    cls: type[Provider] = module.PROVIDER
    return cls(**cleaned)
