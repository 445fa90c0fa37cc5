"""The one place a token revocation is announced, for user tokens (control/tokens/service.py) and node tokens alike.

After the revocation commits: the token's digest is published on `sy:tokens` (every gateway forgets it at once,
control/scheduler/auth.py) and the counter `sy:tokens:revocations` goes up. Each ingest push reads that counter in
the Redis round trip it makes anyway, and an ingest worker whose cached node tokens are older than the counter asks
the database again (dashboard/fleet/node_tokens.py): a revoked node token is refused by every worker from the next
push on, with no window between the commit and a message's arrival.

Node tokens are revoked by `createnode --rotate` (a queryset update: it calls announce_revocation itself), in the
admin (a save) and by deleting the token or its node: the signals below cover saves and deletes, cascades included.
"""

from __future__ import annotations

import logging
import time
from typing import Any

from django.db import transaction
from django.db.models.signals import post_delete, post_save
from django.dispatch import receiver

from dashboard.fleet.models import NodeToken
from dashboard.metrics.latest import redis_client

log = logging.getLogger(__name__)
TOKENS_CHANNEL = "sy:tokens"  # message: the digest of a token that was just revoked (never the secret)
REVOCATIONS_KEY = "sy:tokens:revocations"  # a counter: node-token caches made before its last change are stale


def read_revocations(pipe: Any) -> Any:
    """Queue the read of the revocation counter on a Redis pipeline (its last result). A missing counter (Redis
    restarted empty) starts from the clock, never from a value an older cache entry could carry."""
    pipe.set(REVOCATIONS_KEY, time.time_ns(), nx=True)
    pipe.get(REVOCATIONS_KEY)
    return pipe


def announce_revocation(*digests: str) -> None:
    """Announce these revoked tokens once the current transaction commits (at once outside one). Redis being down
    must not fail a revocation that is stored: caches then drop the token within their TTL."""
    if not digests:
        return

    def publish() -> None:
        try:
            pipe = redis_client().pipeline(transaction=False)
            pipe.incr(REVOCATIONS_KEY)
            for dig in digests:
                pipe.publish(TOKENS_CHANNEL, dig)
            pipe.execute()
        except Exception as exc:  # noqa: BLE001 - any Redis failure is only logged
            log.warning("token revoked but not announced on %s (caches drop it within their TTL): %s",
                        TOKENS_CHANNEL, exc)

    transaction.on_commit(publish)


@receiver(post_save, sender=NodeToken)
def _node_token_saved(sender: Any, instance: NodeToken, **kwargs: Any) -> None:
    if instance.revoked is not None:
        announce_revocation(instance.digest)


@receiver(post_delete, sender=NodeToken)
def _node_token_deleted(sender: Any, instance: NodeToken, **kwargs: Any) -> None:
    announce_revocation(instance.digest)
