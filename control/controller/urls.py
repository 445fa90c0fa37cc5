"""URLs of the controller: /api/v1/scaling/…, /api/v1/providers/…, /api/v1/power/ and the /scaling/ page."""

from django.urls import path

from control.controller import api, deployment_views, rollout_api, views

urlpatterns = [
    path("api/v1/scaling/pools/", api.ScalingPools.as_view(), name="scaling-pools"),
    path("api/v1/scaling/pools/<str:pool>/scale/", api.ScalePool.as_view(), name="scaling-scale"),
    path("api/v1/scaling/pools/<str:pool>/forecast/", api.Forecast.as_view(), name="scaling-forecast"),
    path("api/v1/scaling/pools/<str:pool>/timeline/", api.Timeline.as_view(), name="scaling-timeline"),
    path("api/v1/scaling/actions/", api.ActionList.as_view(), name="scaling-actions"),
    path("api/v1/scaling/actions/<int:pk>/", api.ActionDetail.as_view(), name="scaling-action"),
    path("api/v1/scaling/actions/<int:pk>/revert/", api.ActionRevert.as_view(), name="scaling-revert"),
    path("api/v1/providers/", api.ProviderList.as_view(), name="provider-list"),
    path("api/v1/providers/<str:pool>/", api.ProviderDetail.as_view(), name="provider-detail"),
    path("api/v1/power/", api.PowerSummary.as_view(), name="power-summary"),
    path("api/v1/rollouts/", rollout_api.RolloutList.as_view(), name="rollout-list"),
    path("api/v1/rollouts/<int:pk>/", rollout_api.RolloutDetail.as_view(), name="rollout-detail"),
    path("api/v1/rollouts/<int:pk>/revert/", rollout_api.RolloutRevert.as_view(), name="rollout-revert"),
    path("scaling/", views.scaling, name="scaling"),
    path("scaling/<str:pool>/scale/", views.scale, name="scaling-scale-page"),
    path("scaling/actions/<int:pk>/revert/", views.revert, name="scaling-revert-page"),
    path("scaling/pools/<str:pool>/", deployment_views.pool_deployment, name="pool-deployment"),
    path("scaling/rollouts/<int:pk>/revert/", deployment_views.revert, name="rollout-revert-page"),
]
