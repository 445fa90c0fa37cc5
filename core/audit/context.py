"""Who and where a change comes from: the actor, the request id and the client address, carried to `record()`."""

from __future__ import annotations

import getpass
import uuid
from dataclasses import dataclass
from typing import Any


def new_request_id() -> str:
    return uuid.uuid4().hex


@dataclass(frozen=True)
class Origin:
    actor: str
    request_id: str
    client: str | None = None

    @classmethod
    def from_request(cls, request: Any) -> Origin:
        """The origin of an HTTP request (a Django or DRF request) after RequestIdMiddleware ran."""
        user = getattr(request, "user", None)
        actor = user.get_username() if user is not None and user.is_authenticated else "anonymous"
        request_id = getattr(request, "request_id", None) or new_request_id()
        return cls(actor=actor, request_id=request_id, client=client_address(request))

    @classmethod
    def system(cls, actor: str = "system") -> Origin:
        """Changes made outside a request: the controller, migrations, management commands."""
        return cls(actor=actor, request_id=new_request_id(), client=None)

    @classmethod
    def command(cls, name: str) -> Origin:
        """A management command: the OS user who ran it is the best identity there is."""
        try:
            who = getpass.getuser()
        except Exception:  # no passwd entry in some containers
            who = "unknown"
        return cls(actor=f"manage.py {name} ({who})"[:150], request_id=new_request_id(), client=None)


def client_address(request: Any) -> str | None:
    # REMOTE_ADDR only: X-Forwarded-For is set by whoever sends the request and cannot be trusted without a
    # configured proxy in front, and an audit trail must not record what a client claims about itself.
    meta = getattr(request, "META", {})
    return meta.get("REMOTE_ADDR") or None
