"""One error format for the whole API: {"error": "...", "fields": {"path": "reason"}} with the right status."""

from __future__ import annotations

from typing import Any

from drf_spectacular.utils import OpenApiResponse
from rest_framework import serializers
from rest_framework.response import Response
from rest_framework.views import exception_handler as drf_handler


def _flatten(detail: Any, prefix: str = "") -> dict[str, str]:
    out: dict[str, str] = {}
    if isinstance(detail, dict):
        for key, value in detail.items():
            path = f"{prefix}.{key}" if prefix else str(key)
            out.update(_flatten(value, path))
    elif isinstance(detail, list):
        if all(not isinstance(v, dict | list) for v in detail):
            out[prefix or "$"] = " ".join(str(v) for v in detail)
        else:
            for i, value in enumerate(detail):
                out.update(_flatten(value, f"{prefix}[{i}]"))
    else:
        out[prefix or "$"] = str(detail)
    return out


def exception_handler(exc: Exception, context: dict[str, Any]) -> Response | None:
    response = drf_handler(exc, context)
    if response is None:
        return None
    data = response.data
    if isinstance(data, dict) and set(data) == {"detail"}:
        body = {"error": str(data["detail"]), "fields": {}}
    elif isinstance(data, dict) and "error" in data:
        body = {"error": data["error"], "fields": data.get("fields", {})}
    else:
        fields = _flatten(data)
        first = next(iter(fields.items()), ("$", "invalid"))
        body = {"error": f"{len(fields)} invalid field(s): {first[0]}: {first[1]}", "fields": fields}
    response.data = body
    return response


class ErrorSerializer(serializers.Serializer):
    error = serializers.CharField()
    fields = serializers.DictField(child=serializers.CharField())


def errors(*codes: int) -> dict[int, OpenApiResponse]:
    """The error responses an operation documents (all share the one error format)."""
    text_for = {400: "invalid input (paths in fields)", 401: "not authenticated", 403: "role too low",
                404: "not found", 409: "conflict (stale parent or nothing to do)", 412: "If-Match is stale",
                413: "body too large", 415: "not JSON"}
    return {c: OpenApiResponse(ErrorSerializer, description=text_for.get(c, "")) for c in (401, 403, *codes)}
