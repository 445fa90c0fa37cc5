"""REST API of policies: /api/v1/policies/<kind>/ (active), revisions/, diff/, activate/, rollback/, preview/."""

from __future__ import annotations

from typing import Any

from drf_spectacular.types import OpenApiTypes
from drf_spectacular.utils import OpenApiParameter, extend_schema, extend_schema_field
from rest_framework import generics, serializers
from rest_framework.request import Request
from rest_framework.response import Response
from rest_framework.views import APIView

from control.policy import service
from control.policy.models import PolicyRevision
from control.policy.schemas import KINDS, DocumentError, json_schema
from core.api import ApiError, BoundedJSONParser, body, errors, text
from core.audit.context import Origin
from core.roles import IsOperator, IsViewer

KIND_PARAM = OpenApiParameter("kind", str, OpenApiParameter.PATH, enum=list(KINDS), description="policy kind")
IF_MATCH = OpenApiParameter("If-Match", str, OpenApiParameter.HEADER, required=False,
                            description='the ETag of the active revision the change is based on (e.g. "42")')


@extend_schema_field({"type": "object", "additionalProperties": True})
class DocumentField(serializers.JSONField):
    pass


class RevisionSerializer(serializers.ModelSerializer):
    document = DocumentField()
    active = serializers.SerializerMethodField()

    class Meta:
        model = PolicyRevision
        fields = ["id", "kind", "version", "document", "author", "reason", "parent", "restored_from", "created",
                  "active"]

    def get_active(self, rev: PolicyRevision) -> bool:
        return rev.pk == self.context.get("active_id")


class CreateRequest(serializers.Serializer):
    document = DocumentField()
    reason = serializers.CharField()
    parent = serializers.IntegerField(required=False, help_text="id of the active revision this change is based on "
                                                                "(or send If-Match)")
    activate = serializers.BooleanField(default=True, help_text="false: store the revision without activating it")


class RevisionRequest(serializers.Serializer):
    revision = serializers.IntegerField()
    reason = serializers.CharField()


class PreviewRequest(serializers.Serializer):
    document = DocumentField()


class ChangeSerializer(serializers.Serializer):
    path = serializers.CharField()
    op = serializers.ChoiceField(["added", "removed", "changed"])
    before = serializers.JSONField(allow_null=True)
    after = serializers.JSONField(allow_null=True)


class DiffSerializer(serializers.Serializer):
    a = serializers.IntegerField()
    b = serializers.IntegerField()
    a_version = serializers.IntegerField()
    b_version = serializers.IntegerField()
    changes = ChangeSerializer(many=True)
    unified = serializers.CharField()


class PreviewSerializer(serializers.Serializer):
    active = serializers.IntegerField(help_text="id of the active revision the diff is against")
    document = DocumentField(help_text="the document as it would be stored (defaults filled in)")
    changes = ChangeSerializer(many=True)


def run(fn: Any, *args: Any, **kwargs: Any) -> Any:
    """Call a service function, turning its errors into the API's one error format."""
    try:
        return fn(*args, **kwargs)
    except DocumentError as exc:
        raise ApiError(400, str(exc), exc.fields) from None
    except service.PolicyError as exc:
        raise ApiError(exc.status, exc.message, exc.fields) from None


def if_match(request: Request) -> str | None:
    """The revision id named by If-Match ("42", W/"42"); None when absent or '*'."""
    raw = request.headers.get("If-Match", "").strip()
    if not raw or raw == "*":
        return None
    tag = raw.removeprefix("W/").strip('"')
    if not tag.isdigit() or len(tag) > 18:
        raise ApiError(412, f"If-Match {raw[:40]!r} does not name a revision", {"If-Match": "expected \"<id>\""})
    return tag


def revision_response(rev: PolicyRevision, active_id: int, status: int = 200) -> Response:
    response = Response(RevisionSerializer(rev, context={"active_id": active_id}).data, status=status)
    if rev.pk == active_id:
        response["ETag"] = f'"{rev.pk}"'
    return response


def kind_of(kind: str) -> str:
    return run(service.check_kind, kind)


class PolicyKinds(APIView):
    permission_classes = [IsViewer]

    @extend_schema(responses={200: RevisionSerializer(many=True), **errors()})
    def get(self, request: Request) -> Response:
        """The active revision of every kind."""
        revs = [service.active(k) for k in KINDS]
        return Response([RevisionSerializer(r, context={"active_id": r.pk}).data for r in revs])


class PolicyActive(APIView):
    permission_classes = [IsViewer]

    @extend_schema(parameters=[KIND_PARAM], responses={200: RevisionSerializer, **errors(404)})
    def get(self, request: Request, kind: str) -> Response:
        """The active revision; its ETag is what If-Match on a change should name."""
        rev = run(service.active, kind_of(kind))
        return revision_response(rev, rev.pk)


class PolicySchema(APIView):
    permission_classes = [IsViewer]

    @extend_schema(parameters=[KIND_PARAM], responses={200: OpenApiTypes.OBJECT, **errors(404)})
    def get(self, request: Request, kind: str) -> Response:
        """The JSON Schema of the kind's document."""
        return Response(json_schema(kind_of(kind)))


class PolicyRevisions(generics.ListAPIView):
    """Every revision of the kind, newest first (paginated). POST creates one (operator)."""

    serializer_class = RevisionSerializer
    parser_classes = [BoundedJSONParser]

    def get_permissions(self) -> list[Any]:
        return [IsOperator()] if self.request.method == "POST" else [IsViewer()]

    def get_queryset(self) -> Any:
        if getattr(self, "swagger_fake_view", False):
            return PolicyRevision.objects.none()
        return run(service.revisions, kind_of(self.kwargs["kind"]))

    def get_serializer_context(self) -> dict[str, Any]:
        ctx = super().get_serializer_context()
        if not getattr(self, "swagger_fake_view", False):
            ctx["active_id"] = service.active(kind_of(self.kwargs["kind"])).pk
        return ctx

    @extend_schema(parameters=[KIND_PARAM], responses={200: RevisionSerializer(many=True), **errors(404)})
    def get(self, request: Request, *args: Any, **kwargs: Any) -> Response:
        return super().get(request, *args, **kwargs)

    @extend_schema(parameters=[KIND_PARAM, IF_MATCH], request=CreateRequest,
                   responses={201: RevisionSerializer, **errors(400, 404, 409, 412, 413, 415)})
    def post(self, request: Request, kind: str) -> Response:
        """Create a revision from `document`; `parent` (or If-Match) must be the active revision, else 409."""
        kind = kind_of(kind)
        data = body(request)
        unknown = sorted(set(data) - {"document", "reason", "parent", "activate"})
        if unknown:
            raise ApiError(400, f"unknown field(s): {', '.join(unknown)}", {k: "unknown field" for k in unknown})
        expected = if_match(request)
        parent = data.get("parent", expected)
        if parent is None:
            raise ApiError(400, "parent is required (the active revision's id), or send If-Match",
                           {"parent": "This field is required."})
        if isinstance(parent, bool) or not isinstance(parent, int | str):
            raise ApiError(400, "parent must be a revision id", {"parent": "A valid integer is required."})
        activate = data.get("activate", True)
        if not isinstance(activate, bool):
            raise ApiError(400, "activate must be true or false", {"activate": "Must be a valid boolean."})
        if "document" not in data:
            raise ApiError(400, "document is required", {"document": "This field is required."})
        reason = text(data.get("reason"), "reason")
        change = run(service.create_revision, kind, data["document"], reason, parent, Origin.from_request(request),
                     activate=activate, expected_active=expected)
        active_id = change.revision.pk if activate else change.previous.pk
        return revision_response(change.revision, active_id, status=201)


class PolicyRevisionDetail(APIView):
    permission_classes = [IsViewer]

    @extend_schema(parameters=[KIND_PARAM], responses={200: RevisionSerializer, **errors(404)})
    def get(self, request: Request, kind: str, pk: int) -> Response:
        rev = run(service.get_revision, kind_of(kind), pk)
        return revision_response(rev, service.active(kind).pk)


class PolicyDiff(APIView):
    permission_classes = [IsViewer]

    @extend_schema(
        parameters=[KIND_PARAM, OpenApiParameter("a", int, required=True, description="revision id (before)"),
                    OpenApiParameter("b", int, required=True, description="revision id (after)")],
        responses={200: DiffSerializer, **errors(400, 404)})
    def get(self, request: Request, kind: str) -> Response:
        """The differences between two revisions: changed paths and a unified text diff."""
        kind = kind_of(kind)
        return Response(run(service.diff, kind, request.query_params.get("a"), request.query_params.get("b")))


def _revision_request(request: Request) -> tuple[Any, str]:
    data = body(request)
    unknown = sorted(set(data) - {"revision", "reason"})
    if unknown:
        raise ApiError(400, f"unknown field(s): {', '.join(unknown)}", {k: "unknown field" for k in unknown})
    revision = data.get("revision")
    if revision is None:
        raise ApiError(400, "revision is required", {"revision": "This field is required."})
    if isinstance(revision, bool) or not isinstance(revision, int | str):
        raise ApiError(400, "revision must be a revision id", {"revision": "A valid integer is required."})
    return revision, text(data.get("reason"), "reason")


class PolicyActivate(APIView):
    permission_classes = [IsOperator]
    parser_classes = [BoundedJSONParser]

    @extend_schema(parameters=[KIND_PARAM, IF_MATCH], request=RevisionRequest,
                   responses={200: RevisionSerializer, **errors(400, 404, 409, 412, 413, 415)})
    def post(self, request: Request, kind: str) -> Response:
        """Make an existing revision the active one (e.g. one stored with activate=false)."""
        kind = kind_of(kind)
        revision, reason = _revision_request(request)
        change = run(service.activate, kind, revision, reason, Origin.from_request(request),
                     expected_active=if_match(request))
        return revision_response(change.revision, change.revision.pk)


class PolicyRollback(APIView):
    permission_classes = [IsOperator]
    parser_classes = [BoundedJSONParser]

    @extend_schema(parameters=[KIND_PARAM, IF_MATCH], request=RevisionRequest,
                   responses={201: RevisionSerializer, **errors(400, 404, 409, 412, 413, 415)})
    def post(self, request: Request, kind: str) -> Response:
        """Restore an earlier revision's content as a new, active revision."""
        kind = kind_of(kind)
        revision, reason = _revision_request(request)
        change = run(service.rollback, kind, revision, reason, Origin.from_request(request),
                     expected_active=if_match(request))
        return revision_response(change.revision, change.revision.pk, status=201)


class PolicyPreview(APIView):
    permission_classes = [IsViewer]
    parser_classes = [BoundedJSONParser]

    @extend_schema(parameters=[KIND_PARAM], request=PreviewRequest,
                   responses={200: PreviewSerializer, **errors(400, 404, 413, 415)})
    def post(self, request: Request, kind: str) -> Response:
        """Validate a document and diff it against the active revision; nothing is stored."""
        kind = kind_of(kind)
        data = body(request)
        if "document" not in data:
            raise ApiError(400, "document is required", {"document": "This field is required."})
        result = run(service.preview, kind, data["document"])
        return Response({"active": result["active"].pk, "document": result["document"], "changes": result["changes"]})

