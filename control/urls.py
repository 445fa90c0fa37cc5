"""URLs of the control plane: the API under api/v1/ and the pages (policies, audit, node actions)."""

from django.urls import include, path

from control.canary import urls as canary_urls
from control.nodes import api as node_api
from control.nodes import views as node_views
from control.policy import api as policy_api
from control.policy import views as policy_views
from control.tokens import api as token_api
from control.tokens import views as token_views
from core.audit import api as audit_api
from core.audit import views as audit_views

api = [
    path("policies/", policy_api.PolicyKinds.as_view(), name="policy-kinds"),
    path("policies/<str:kind>/", policy_api.PolicyActive.as_view(), name="policy-active"),
    path("policies/<str:kind>/schema/", policy_api.PolicySchema.as_view(), name="policy-schema"),
    path("policies/<str:kind>/revisions/", policy_api.PolicyRevisions.as_view(), name="policy-revisions"),
    path("policies/<str:kind>/revisions/<int:pk>/", policy_api.PolicyRevisionDetail.as_view(),
         name="policy-revision"),
    path("policies/<str:kind>/diff/", policy_api.PolicyDiff.as_view(), name="policy-diff"),
    path("policies/<str:kind>/activate/", policy_api.PolicyActivate.as_view(), name="policy-activate"),
    path("policies/<str:kind>/rollback/", policy_api.PolicyRollback.as_view(), name="policy-rollback"),
    *canary_urls.app_api,
    path("policies/<str:kind>/preview/", policy_api.PolicyPreview.as_view(), name="policy-preview"),
    path("audit/", audit_api.AuditList.as_view(), name="audit-list"),
    path("audit/<int:pk>/", audit_api.AuditDetail.as_view(), name="audit-detail"),
    path("tokens/", token_api.TokenList.as_view(), name="token-list"),
    path("tokens/<int:pk>/revoke/", token_api.TokenRevoke.as_view(), name="token-revoke"),
    *[path(f"nodes/<str:name>/{action}/", node_api.view_for(action).as_view(), name=f"node-{action}")
      for action in ("drain", "cordon", "uncordon")],
]

pages = [
    path("policies/", policy_views.index, name="policies"),
    path("policies/<str:kind>/", policy_views.editor, name="policy-editor"),
    path("policies/<str:kind>/history/", policy_views.history, name="policy-history"),
    path("policies/<str:kind>/diff/", policy_views.diff, name="policy-diff-page"),
    path("policies/<str:kind>/rollback/", policy_views.rollback, name="policy-rollback-page"),
    path("audit/", audit_views.audit_list, name="audit"),
    path("audit/<int:pk>/", audit_views.audit_detail, name="audit-event"),
    path("node-actions/", node_views.node_actions, name="node-actions"),
    path("node-actions/<str:name>/<str:action>/", node_views.node_action, name="node-action"),
    path("account/tokens/", token_views.tokens, name="account-tokens"),
    path("account/tokens/<int:pk>/revoke/", token_views.revoke, name="account-token-revoke"),
]

urlpatterns = [
    path("api/v1/", include(api)),
    *pages,
    path("", include("control.alerts.urls")),
    path("", include("control.webhooks.urls")),
    path("", include("control.routing.urls")),
    path("", include("control.jobs.urls")),
    path("", include("control.controller.urls")),
    path("", include("control.canary.urls")),
]
