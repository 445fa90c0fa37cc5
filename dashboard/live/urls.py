from django.urls import path

from dashboard.live import node_views, views

urlpatterns = [
    path("", views.overview, name="overview"),
    path("heatmap/", views.heatmap, name="heatmap"),
    path("pools/", node_views.pools, name="pools"),
    path("nodes/<str:name>/", node_views.node_detail, name="node"),
]
