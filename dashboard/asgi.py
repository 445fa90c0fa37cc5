"""ASGI entry point: agent ingest on its lean path, other HTTP through Django, websockets through Channels."""

import os
from typing import Any

from django.core.asgi import get_asgi_application

os.environ.setdefault("DJANGO_SETTINGS_MODULE", "dashboard.settings")
django_asgi_app = get_asgi_application()

from channels.routing import ProtocolTypeRouter  # noqa: E402  (Django must be set up first)

from dashboard.fleet import ingest_asgi  # noqa: E402


async def http_router(scope: dict[str, Any], receive: Any, send: Any) -> None:
    if scope["path"].rstrip("/") == ingest_asgi.PATH:
        await ingest_asgi.app(scope, receive, send)
    else:
        await django_asgi_app(scope, receive, send)


application = ProtocolTypeRouter({"http": http_router})
