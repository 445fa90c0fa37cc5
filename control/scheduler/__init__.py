"""The scheduler core (pure scoring and picking) and the gateway ASGI app that uses it."""
