from django.apps import AppConfig


class NodesConfig(AppConfig):
    # No models: an app only so its templates are found.
    name = "control.nodes"
    label = "control_nodes"
