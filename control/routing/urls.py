"""URLs of control.routing: the API under api/v1/routing/ and the /routing/ page."""

from django.urls import path

from control.routing import api, views

urlpatterns = [
    path("api/v1/routing/summary", api.RoutingSummary.as_view(), name="routing-summary"),
    path("api/v1/routing/minutes", api.RoutingMinutes.as_view(), name="routing-minutes"),
    path("routing/", views.routing, name="routing"),
]
