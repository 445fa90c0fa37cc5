"""/api/v1/tokens/: a user's own API tokens (admins: anyone's). The secret is in the create response only."""

from __future__ import annotations

from typing import Any

from django.contrib.auth import get_user_model
from drf_spectacular.utils import OpenApiParameter, extend_schema
from rest_framework import generics, serializers
from rest_framework.request import Request
from rest_framework.response import Response
from rest_framework.views import APIView

from control.tokens import service
from core.api import ApiError, BoundedJSONParser, body, errors, query_text, text
from core.audit.context import Origin
from core.roles import IsViewer, has_role
from dashboard.accounts.models import UserToken


class TokenSerializer(serializers.ModelSerializer):
    user = serializers.CharField(source="user.username", read_only=True)

    class Meta:
        model = UserToken
        fields = ["id", "user", "name", "prefix", "priority_class", "created", "last_used", "revoked"]


class TokenCreated(TokenSerializer):
    token = serializers.CharField(help_text="the secret: shown in this response only, keep it")

    class Meta(TokenSerializer.Meta):
        fields = [*TokenSerializer.Meta.fields, "token"]


class CreateTokenRequest(serializers.Serializer):
    name = serializers.CharField(max_length=100)
    reason = serializers.CharField()
    user = serializers.CharField(required=False, help_text="whose token (admins only; default: yourself)")
    priority_class = serializers.CharField(
        required=False, help_text="the most important gateway priority class its requests may have (X-Priority may "
                                  "only lower it; default: the priorities policy's default); a class above the "
                                  "default needs an admin")


class RevokeRequest(serializers.Serializer):
    reason = serializers.CharField()


def _is_admin(request: Request) -> bool:
    return has_role(request.user, "admin")


def visible_tokens(request: Request) -> Any:
    qs = UserToken.objects.select_related("user")
    return qs if _is_admin(request) else qs.filter(user=request.user)


class TokenList(generics.ListAPIView):
    """Your API tokens (admins see everyone's; filter with ?user=). POST issues a new one."""

    serializer_class = TokenSerializer
    permission_classes = [IsViewer]
    parser_classes = [BoundedJSONParser]

    def get_queryset(self) -> Any:
        qs = visible_tokens(self.request)
        if user := query_text(self.request, "user", 150):
            qs = qs.filter(user__username=user)
        return qs

    @extend_schema(parameters=[OpenApiParameter("user", str, description="only this user's tokens")],
                   responses={200: TokenSerializer(many=True), **errors(400)})
    def get(self, request: Request, *args: Any, **kwargs: Any) -> Any:
        return super().get(request, *args, **kwargs)

    @extend_schema(request=CreateTokenRequest, responses={201: TokenCreated, **errors(400, 403, 404, 413, 415)})
    def post(self, request: Request) -> Response:
        data = body(request)
        unknown = sorted(set(data) - {"name", "reason", "user", "priority_class"})
        if unknown:
            raise ApiError(400, f"unknown field(s): {', '.join(unknown)}", {k: "unknown field" for k in unknown})
        name = text(data.get("name"), "name", max_length=100)
        reason = text(data.get("reason"), "reason")
        username = text(data.get("user"), "user", required=False, max_length=150)
        priority_class = text(data.get("priority_class"), "priority_class", required=False, max_length=63) or ""
        owner = request.user
        if username and username != request.user.get_username():
            if not _is_admin(request):
                raise ApiError(403, "only an admin can issue tokens for another user")
            owner = get_user_model().objects.filter(username=username, is_active=True).first()
            if owner is None:
                raise ApiError(404, f"no active user {username!r}", {"user": "no such user"})
        try:
            token, plain = service.issue(owner, name, Origin.from_request(request), reason, priority_class,
                                         by_admin=_is_admin(request))
        except service.UnknownClass as exc:
            raise ApiError(400, str(exc), {"priority_class": str(exc)}) from None
        except service.ClassNotAllowed as exc:
            raise ApiError(403, str(exc), {"priority_class": str(exc)}) from None
        return Response({**TokenSerializer(token).data, "token": plain}, status=201)


class TokenRevoke(APIView):
    permission_classes = [IsViewer]
    parser_classes = [BoundedJSONParser]

    @extend_schema(request=RevokeRequest, responses={200: TokenSerializer, **errors(400, 404, 409, 413, 415)})
    def post(self, request: Request, pk: int) -> Response:
        """Revoke one of your tokens (admins: anyone's); it stops working at once."""
        token = visible_tokens(request).filter(pk=pk).first() if 0 < pk < 2**63 else None
        if token is None:  # another user's token is "not found", not "forbidden": its existence is no one's business
            raise ApiError(404, f"no token {pk}")
        data = body(request)
        unknown = sorted(set(data) - {"reason"})
        if unknown:
            raise ApiError(400, f"unknown field(s): {', '.join(unknown)}", {k: "unknown field" for k in unknown})
        reason = text(data.get("reason"), "reason")
        if not service.revoke(token, Origin.from_request(request), reason):
            raise ApiError(409, f"token {pk} is already revoked")
        return Response(TokenSerializer(token).data)
