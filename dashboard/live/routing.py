"""Websocket URLs, mounted by dashboard/asgi.py under the origin check and session auth."""

from django.urls import path

from dashboard.live.consumers import FleetConsumer

websocket_urlpatterns = [
    path("ws/fleet/", FleetConsumer.as_asgi()),
]
