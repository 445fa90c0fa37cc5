"""URLs of control.alerts (API under api/v1/ and its pages)."""

from django.urls import path  # noqa: F401

urlpatterns: list = []
