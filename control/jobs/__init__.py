"""Asynchronous (and sharded) inference jobs run through Celery and the gateway."""
