from django.apps import AppConfig


class MetricsConfig(AppConfig):
    name = "dashboard.metrics"
    label = "metrics"
    default_auto_field = "django.db.models.BigAutoField"
