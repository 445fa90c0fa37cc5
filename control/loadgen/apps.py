from django.apps import AppConfig


class LoadgenConfig(AppConfig):
    name = "control.loadgen"
    label = "loadgen"
