from django.apps import AppConfig


class TokensConfig(AppConfig):
    """User API tokens: issuing and revoking (service), the API, the page, and `manage.py createuser`."""

    name = "control.tokens"
    label = "tokens"
