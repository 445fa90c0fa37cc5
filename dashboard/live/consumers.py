"""/ws/fleet/: the browser's live feed. Wire protocol in docs/live.md.

A socket subscribes to topics; it gets the topic's full frame at once, then whatever the process-wide broadcaster
fans out to the topic's channel-layer group. This consumer never builds frames per tick itself.
"""

from __future__ import annotations

import time
from importlib import import_module
from typing import Any

import orjson
from channels.db import database_sync_to_async
from channels.generic.websocket import AsyncJsonWebsocketConsumer
from django.conf import settings
from django.contrib.auth import get_user_model

from core.roles import has_role
from dashboard.live import broadcast, frames

PROTOCOL = 1
MAX_MESSAGE_BYTES = 4096  # a client message is a small command; anything bigger is a mistake or an attack
MAX_TOPICS = 32
CLOSE_UNAUTHENTICATED = 4401
CLOSE_FORBIDDEN = 4403
CLOSE_TOO_BIG = 1009
RECHECK_S = 30.0  # how long a socket may outlive its user's logout, deactivation or loss of the viewer role


def close_code_for(user_id: Any, session_key: str | None) -> int | None:
    """None while the socket's user may still watch; else the close code (session ended, or role lost)."""
    if session_key is not None:
        store = import_module(settings.SESSION_ENGINE).SessionStore(session_key)
        if str(store.get("_auth_user_id")) != str(user_id):  # logged out, expired or flushed
            return CLOSE_UNAUTHENTICATED
    user = get_user_model().objects.filter(pk=user_id, is_active=True).first()
    if user is None:
        return CLOSE_UNAUTHENTICATED
    return None if has_role(user, "viewer") else CLOSE_FORBIDDEN


def _node_exists(name: str) -> bool:
    if any(n.name == name for n in frames.node_infos()):
        return True
    frames.forget_nodes()  # a node created in the last few seconds: look again
    return any(n.name == name for n in frames.node_infos())


class FleetConsumer(AsyncJsonWebsocketConsumer):
    async def connect(self) -> None:
        self.topics: set[str] = set()
        self.authorized = False
        self.hub: broadcast.Broadcaster | None = None
        user = self.scope.get("user")
        # Accept first: a close before accept reaches the browser as a bare 1006 with no reason; these codes let
        # live.js tell "log in again" from "network down" (and stop reconnecting).
        await self.accept()
        if user is None or not user.is_authenticated:
            await self.close(code=CLOSE_UNAUTHENTICATED)
            return
        if not await database_sync_to_async(has_role)(user, "viewer"):
            await self.close(code=CLOSE_FORBIDDEN)
            return
        self.authorized = True
        self.user_id = user.pk
        session = self.scope.get("session")
        self.session_key = getattr(session, "session_key", None)
        self.checked = time.monotonic()
        self.hub = broadcast.get()
        await self.hub.attach()
        await self.send_json({"type": "hello", "protocol": PROTOCOL, "tick_s": broadcast.TICK_S,
                              "user": user.get_username()})

    async def disconnect(self, code: int) -> None:
        for topic in list(self.topics):
            await self._drop(topic)
        if self.hub is not None:
            await self.hub.detach()

    async def receive(self, text_data: str | None = None, bytes_data: bytes | None = None) -> None:
        if not self.authorized:
            return
        if text_data is None:
            await self.error("send JSON text messages, not binary")
            return
        if len(text_data) > MAX_MESSAGE_BYTES:
            await self.error(f"message of {len(text_data)} characters; the limit is {MAX_MESSAGE_BYTES}")
            await self.close(code=CLOSE_TOO_BIG)
            return
        try:
            msg = orjson.loads(text_data)
        except orjson.JSONDecodeError:
            await self.error("not JSON: send {\"type\": \"subscribe\", \"topic\": \"kpi\"}")
            return
        if not isinstance(msg, dict):
            await self.error("a message is a JSON object with a 'type'")
            return
        await self.receive_json(msg)

    async def receive_json(self, content: dict[str, Any], **kwargs: Any) -> None:
        kind = content.get("type")
        topic = content.get("topic")
        if kind == "ping":
            await self.send_json({"type": "pong"})
        elif kind in ("subscribe", "resync"):
            await self.subscribe(topic)
        elif kind == "unsubscribe":
            if isinstance(topic, str) and topic in self.topics:
                await self._drop(topic)
            await self.send_json({"type": "unsubscribed", "topic": topic if isinstance(topic, str) else None})
        else:
            await self.error(f"unknown message type {str(kind)[:40]!r}: use subscribe, unsubscribe, resync or ping")

    async def subscribe(self, topic: Any) -> None:
        try:
            topic = frames.check_topic(topic)
            if topic.startswith("tail:") and not await database_sync_to_async(_node_exists)(topic[5:]):
                raise frames.TopicError(f"unknown node {topic[5:]!r}")
        except frames.TopicError as exc:
            await self.error(str(exc), topic=topic if isinstance(topic, str) else None)
            return
        if topic not in self.topics:
            if len(self.topics) >= MAX_TOPICS:
                await self.error(f"at most {MAX_TOPICS} topics per connection", topic=topic)
                return
            # Join the group before reading the frame, so no change published in between is missed (the client
            # drops deltas whose seq it already has).
            await self.channel_layer.group_add(broadcast.group_of(topic), self.channel_name)
            self.topics.add(topic)
            assert self.hub is not None
            await self.hub.add(topic)
        # Subscribing again, or a resync after a seq gap, re-sends the full frame.
        try:
            frame = await database_sync_to_async(broadcast.current_frame)(topic)
        except frames.TopicError as exc:
            await self.error(str(exc), topic=topic)
            return
        await self.send(text_data=broadcast.encode_full(frame))

    async def _drop(self, topic: str) -> None:
        self.topics.discard(topic)
        await self.channel_layer.group_discard(broadcast.group_of(topic), self.channel_name)
        if self.hub is not None:
            await self.hub.remove(topic)

    async def live_message(self, event: dict[str, Any]) -> None:
        """A frame or delta from the broadcaster, already serialised once for every socket."""
        if time.monotonic() - self.checked >= RECHECK_S:
            # The role was checked at connect; a wall screen's socket can stay open for weeks, so look again now
            # and then: a logged-out or demoted user stops receiving within RECHECK_S of the next frame.
            self.checked = time.monotonic()
            code = await database_sync_to_async(close_code_for)(self.user_id, self.session_key)
            if code is not None:
                self.authorized = False
                await self.close(code=code)
                return
        await self.send(text_data=event["text"])

    async def error(self, message: str, topic: str | None = None) -> None:
        await self.send_json({"type": "error", "error": message, "topic": topic})

    @classmethod
    async def encode_json(cls, content: Any) -> str:
        return orjson.dumps(content).decode()
