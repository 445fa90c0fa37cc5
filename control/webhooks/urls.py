"""URLs of control.webhooks: the API under api/v1/webhooks/ and the admin pages under /webhooks/."""

from django.urls import path

from control.webhooks import api, views

urlpatterns = [
    path("api/v1/webhooks/", api.WebhookList.as_view(), name="webhook-list"),
    path("api/v1/webhooks/<int:pk>/", api.WebhookDetail.as_view(), name="webhook-api-detail"),
    path("api/v1/webhooks/<int:pk>/test/", api.WebhookTest.as_view(), name="webhook-test"),
    path("api/v1/webhooks/<int:pk>/deliveries/", api.WebhookDeliveries.as_view(), name="webhook-deliveries"),
    path("webhooks/", views.receivers, name="webhooks"),
    path("webhooks/<int:pk>/", views.receiver_detail, name="webhook-detail"),
    path("webhooks/<int:pk>/<str:action>/", views.receiver_action, name="webhook-action"),
]
