from django.contrib import admin
from django.templatetags.static import static
from django.urls import include, path
from django.views.generic import RedirectView
from drf_spectacular.views import SpectacularAPIView, SpectacularSwaggerView

from dashboard.accounts.login import ThrottledAdminAuthenticationForm, ThrottledLoginView
from dashboard.fleet import api as fleet_api
from dashboard.metrics import views as metric_views

api = [
    path("pools/", fleet_api.PoolList.as_view(), name="pool-list"),
    path("nodes/", fleet_api.NodeList.as_view(), name="node-list"),
    path("nodes/<str:name>/", fleet_api.NodeDetail.as_view(), name="node-detail"),
    path("gpus/", fleet_api.GPUList.as_view(), name="gpu-list"),
    path("metrics/query", metric_views.MetricQuery.as_view(), name="metric-query"),
    path("metrics/catalogue", metric_views.Catalogue.as_view(), name="metric-catalogue"),
]

# The admin site signs in through the same throttle as the login page.
admin.site.login_form = ThrottledAdminAuthenticationForm

urlpatterns = [
    path("", include("dashboard.live.urls")),
    path("", include("control.urls")),
    # Browsers ask for /favicon.ico on pages (and error pages) that do not link one.
    path("favicon.ico", RedirectView.as_view(url=static("switchyard/favicon.svg"), permanent=True)),
    path("accounts/login/", ThrottledLoginView.as_view(), name="login"),
    path("accounts/", include("django.contrib.auth.urls")),
    path("admin/", admin.site.urls),
    path("api/v1/", include(api)),
    path("metrics/fleet", metric_views.FleetExposition.as_view(), name="metrics-fleet"),
    path("api/schema/", SpectacularAPIView.as_view(), name="schema"),
    path("api/docs/", SpectacularSwaggerView.as_view(url_name="schema"), name="api-docs"),
]
