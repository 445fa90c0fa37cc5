from django.urls import path

from dashboard.live import frames_api, history_api, node_views, trends_api, views

urlpatterns = [
    path("", views.overview, name="overview"),
    path("heatmap/", views.heatmap, name="heatmap"),
    path("pools/", node_views.pools, name="pools"),
    path("nodes/<str:name>/", node_views.node_detail, name="node"),
    path("api/v1/nodes/<str:name>/history", history_api.NodeHistory.as_view(), name="node-history"),
    path("api/v1/live/<str:topic>", frames_api.LiveFrame.as_view(), name="live-frame"),
    path("api/v1/overview/trends", trends_api.OverviewTrends.as_view(), name="overview-trends"),
    path("api/v1/pools/summary", history_api.PoolsSummary.as_view(), name="pools-summary"),
]
