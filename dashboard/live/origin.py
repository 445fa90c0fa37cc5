"""The websocket origin check, with a reason the page can show.

Channels' AllowedHostsOriginValidator refuses a foreign origin before the handshake completes, which a browser
reports as a bare 1006 ("abnormal closure"), exactly like a network failure: the page cannot tell the operator that
the host they browse by is missing from SWITCHYARD_ALLOWED_HOSTS. This accepts such a socket only to close it at once
with CLOSE_ORIGIN, before anything reaches the consumer: no session is read and nothing is sent, so a foreign page
learns no more than that it was refused.
"""

from __future__ import annotations

from typing import Any
from urllib.parse import urlparse

from channels.security.websocket import AllowedHostsOriginValidator

CLOSE_ORIGIN = 4400


class ExplainedOriginValidator:
    def __init__(self, application: Any) -> None:
        self.application = application
        self.validator = AllowedHostsOriginValidator(application)

    async def __call__(self, scope: dict[str, Any], receive: Any, send: Any) -> None:
        origin = None
        for name, value in scope.get("headers", []):
            if name == b"origin":
                try:
                    origin = urlparse(value.decode("latin1"))
                except (UnicodeDecodeError, ValueError):
                    origin = None
        if self.validator.valid_origin(origin):
            await self.application(scope, receive, send)
            return
        message = await receive()
        if message.get("type") != "websocket.connect":
            return
        await send({"type": "websocket.accept"})
        await send({"type": "websocket.close", "code": CLOSE_ORIGIN})
