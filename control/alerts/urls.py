"""URLs of control.alerts: the API under api/v1/ and the /alerts/ page."""

from django.urls import path

from control.alerts import api, views

urlpatterns = [
    path("api/v1/alerts/", api.AlertList.as_view(), name="alert-list"),
    path("api/v1/alerts/rules/", api.AlertRules.as_view(), name="alert-rules"),
    path("api/v1/silences/", api.SilenceList.as_view(), name="silence-list"),
    path("api/v1/silences/<int:pk>/expire/", api.SilenceExpire.as_view(), name="silence-expire"),
    path("alerts/", views.alerts, name="alerts"),
    path("alerts/silences/", views.silence_create, name="silence-create"),
    path("alerts/silences/<int:pk>/expire/", views.silence_expire, name="silence-expire-page"),
]
