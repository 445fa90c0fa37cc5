"""What every control-plane API view shares: the error format, a bounded JSON parser and input checks."""

from __future__ import annotations

from typing import Any

from rest_framework import serializers, status
from rest_framework.exceptions import APIException, ParseError
from rest_framework.parsers import JSONParser
from rest_framework.request import Request

from core.api_errors import errors  # noqa: F401  (the control views import it from here)

# A policy document is a few KiB; a megabyte of one is a mistake or an attack, refused before it is parsed.
MAX_BODY_BYTES = 256 * 1024


class ReasonIn(serializers.Serializer):
    """The body of an action that needs only a reason (revert, expire, delete): one OpenAPI component for all."""

    reason = serializers.CharField()


class ApiError(APIException):
    """Raise to answer {"error": message, "fields": {...}} with `status_code` (core.api_errors keeps it)."""

    def __init__(self, status_code: int, message: str, fields: dict[str, str] | None = None) -> None:
        self.status_code = status_code
        super().__init__({"error": message, "fields": fields or {}})


class BoundedJSONParser(JSONParser):
    """JSON bodies up to `max_bytes` (413 beyond, judged by Content-Length before parsing) and not nested so deep
    that the parser recurses out of the stack."""

    max_bytes = MAX_BODY_BYTES

    def parse(self, stream: Any, media_type: str | None = None, parser_context: dict[str, Any] | None = None) -> Any:
        request = (parser_context or {}).get("request")
        try:
            length = int(request.META.get("CONTENT_LENGTH") or 0) if request is not None else 0
        except ValueError:
            length = 0
        if length > self.max_bytes:
            raise ApiError(status.HTTP_413_REQUEST_ENTITY_TOO_LARGE,
                           f"request body is {length} bytes; the limit is {self.max_bytes}")
        try:
            return super().parse(stream, media_type, parser_context)
        except RecursionError:
            raise ParseError("JSON parse error - nested too deeply") from None


def body(request: Request) -> dict[str, Any]:
    data = request.data
    if not isinstance(data, dict):
        raise ApiError(400, "the body must be a JSON object", {"$": f"expected an object, got {type(data).__name__}"})
    return data


def text(value: Any, field: str, *, required: bool = True, max_length: int = 2000) -> str:
    """A user-supplied string: present when required, bounded, and free of NUL (PostgreSQL refuses it)."""
    if value is None or (isinstance(value, str) and not value.strip()):
        if required:
            raise ApiError(400, f"{field} is required", {field: "This field is required."})
        return ""
    if not isinstance(value, str):
        raise ApiError(400, f"{field} must be a string", {field: f"expected a string, got {type(value).__name__}"})
    if "\x00" in value:
        raise ApiError(400, f"{field} contains a NUL character", {field: "NUL characters are not allowed."})
    if len(value) > max_length:
        raise ApiError(400, f"{field} is too long", {field: f"at most {max_length} characters"})
    return value.strip()


def query_text(request: Request, name: str, max_length: int = 200) -> str | None:
    value = request.query_params.get(name)
    if value is None or value == "":
        return None
    return text(value, name, required=False, max_length=max_length) or None


