"""CSV from the same API call as the JSON: `?format=csv` on a view that mixes in CSVExport.

The view builds its usual document and says how to flatten it (`to_csv`); errors stay JSON whatever the format,
so a script asking for CSV still reads why it was refused.
"""

from __future__ import annotations

from typing import Any

from rest_framework.renderers import BaseRenderer, JSONRenderer
from rest_framework.request import Request
from rest_framework.response import Response


class CSVRenderer(BaseRenderer):
    media_type = "text/csv"
    format = "csv"
    charset = "utf-8"

    def render(self, data: Any, accepted_media_type: str | None = None, renderer_context: Any = None) -> bytes:
        return data.encode() if isinstance(data, str) else str(data).encode()


class CSVExport:
    """Mix into an APIView before APIView; implement `to_csv(document) -> str` and call `respond(request, doc,
    filename)`."""

    renderer_classes = [JSONRenderer, CSVRenderer]

    def to_csv(self, document: Any) -> str:  # pragma: no cover - each view implements it
        raise NotImplementedError

    def respond(self, request: Request, document: Any, filename: str) -> Response:
        if getattr(request.accepted_renderer, "format", None) == "csv":
            resp = Response(self.to_csv(document))
            resp["Content-Disposition"] = f'attachment; filename="{filename}.csv"'
            return resp
        return Response(document)

    def finalize_response(self, request: Request, response: Any, *args: Any, **kwargs: Any) -> Any:
        if isinstance(response, Response) and response.status_code >= 400:
            # Errors are JSON objects ({"error", "fields"}) whatever format was asked for.
            request.accepted_renderer = JSONRenderer()
            request.accepted_media_type = JSONRenderer.media_type
        return super().finalize_response(request, response, *args, **kwargs)  # type: ignore[misc]
