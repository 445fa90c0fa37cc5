from django.apps import AppConfig


class ControllerConfig(AppConfig):
    name = "control.controller"
    label = "controller"
    default_auto_field = "django.db.models.BigAutoField"
