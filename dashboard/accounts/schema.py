"""Tells drf-spectacular how API tokens are sent, so the OpenAPI document and Swagger UI show it."""

from __future__ import annotations

from typing import Any

from drf_spectacular.extensions import OpenApiAuthenticationExtension


class UserTokenScheme(OpenApiAuthenticationExtension):
    target_class = "dashboard.accounts.auth.UserTokenAuthentication"
    name = "tokenAuth"

    def get_security_definition(self, auto_schema: Any) -> dict[str, str]:
        return {
            "type": "apiKey",
            "in": "header",
            "name": "Authorization",
            "description": "A user API token: `Token <token>` (or `Bearer <token>`). "
                           "`python manage.py createuser NAME --role viewer` prints one.",
        }
