"""ASGI entry point: agent ingest on its lean path, other HTTP through Django, websockets through Channels."""

import gc
import os
from typing import Any

from django.core.asgi import get_asgi_application

os.environ.setdefault("DJANGO_SETTINGS_MODULE", "dashboard.settings")
django_asgi_app = get_asgi_application()

from channels.auth import AuthMiddlewareStack  # noqa: E402  (Django must be set up first)
from channels.routing import ProtocolTypeRouter, URLRouter  # noqa: E402

from dashboard.fleet import ingest_asgi  # noqa: E402
from dashboard.live.origin import ExplainedOriginValidator  # noqa: E402
from dashboard.live.routing import websocket_urlpatterns  # noqa: E402

HEALTHZ_BODY = b'{"status":"ok"}'


async def healthz(send: Any) -> None:
    """Liveness and readiness for probes and load balancers: this process answers HTTP. Answered before Django, since
    a kubelet's probe carries the pod's IP as Host, which ALLOWED_HOSTS refuses; it reads nothing and names nothing."""
    await send({"type": "http.response.start", "status": 200,
                "headers": [(b"content-type", b"application/json"), (b"content-length", b"%d" % len(HEALTHZ_BODY)),
                            (b"cache-control", b"no-store")]})
    await send({"type": "http.response.body", "body": HEALTHZ_BODY})


async def http_router(scope: dict[str, Any], receive: Any, send: Any) -> None:
    if scope["path"] == "/healthz" and scope["method"] == "GET":
        await healthz(send)
    elif scope["path"].rstrip("/") == ingest_asgi.PATH:
        await ingest_asgi.app(scope, receive, send)
    else:
        await django_asgi_app(scope, receive, send)


# Browsers send cookies with cross-site websocket handshakes: the origin check stops another site's page from
# riding a logged-in operator's session. A refused origin is closed with a code that says so (dashboard/live/origin.py).
application = ProtocolTypeRouter({
    "http": http_router,
    "websocket": ExplainedOriginValidator(AuthMiddlewareStack(URLRouter(websocket_urlpatterns))),
})

# What is loaded by now (Django, the apps, the routers) lives as long as the process: frozen out of the collector's
# view, it is no longer walked by every full collection, which a busy ingest's per-push allocations keep triggering.
gc.freeze()
