from django.urls import path

from control.canary import api, views

app_api = [
    path("policies/<str:kind>/whatif/", api.WhatIf.as_view(), name="policy-whatif"),
    path("policies/<str:kind>/canary/", api.CanaryView.as_view(), name="policy-canary"),
    *[path(f"policies/<str:kind>/canary/{name}/", view.as_view(), name=f"policy-canary-{name}")
      for name, view in api.ACTIONS.items()],
]

urlpatterns = [
    path("policies/<str:kind>/canary/", views.canary_page, name="policy-canary-page"),
]
