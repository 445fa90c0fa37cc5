"""Which provider scales each pool: set and removed by an admin, validated, audited."""

from __future__ import annotations

from typing import Any

from django.db import transaction
from django.utils import timezone

from control.controller.models import PoolProvider
from control.providers.registry import KINDS, ConfigError, validate_config
from core.audit.context import Origin
from core.audit.record import record
from dashboard.fleet.models import Pool


def describe(b: PoolProvider) -> dict[str, Any]:
    return {"pool": b.pool.name, "kind": b.kind, "config": b.config, "enabled": b.enabled,
            "updated": b.updated.isoformat()}


def set_provider(pool_name: str, kind: Any, config: Any, enabled: Any, reason: str, origin: Origin) -> PoolProvider:
    """Create or replace the pool's provider. ConfigError (with fields) when kind or config is unusable;
    Pool.DoesNotExist when there is no such pool."""
    if not isinstance(kind, str) or kind not in KINDS:
        raise ConfigError({"kind": f"must be one of {', '.join(KINDS)}, got {kind!r}"})
    cleaned = validate_config(kind, config if config is not None else {})
    if not isinstance(enabled, bool):
        raise ConfigError({"enabled": f"must be true or false, got {enabled!r}"})
    with transaction.atomic():
        pool = Pool.objects.select_for_update().get(name=pool_name)
        current = PoolProvider.objects.filter(pool=pool).first()
        if current is not None and (current.kind, current.config, current.enabled) == (kind, cleaned, enabled):
            return current  # the same settings again (a rerun demo, an idempotent PUT): nothing changed, no audit
        before = describe(current) if current else None
        if current is None:
            current = PoolProvider(pool=pool)
        current.kind, current.config, current.enabled, current.updated = kind, cleaned, enabled, timezone.now()
        current.save()
        after = describe(current)
        if before is not None:
            before.pop("updated")
        record(origin, "provider.set", f"pool:{pool.name}", reason, before=before,
               after={k: v for k, v in after.items() if k != "updated"})
    return current


def remove_provider(pool_name: str, reason: str, origin: Origin) -> bool:
    with transaction.atomic():
        current = PoolProvider.objects.select_for_update().select_related("pool").filter(pool__name=pool_name).first()
        if current is None:
            return False
        before = describe(current)
        before.pop("updated")
        current.delete()
        record(origin, "provider.remove", f"pool:{pool_name}", reason, before=before, after=None)
    return True
