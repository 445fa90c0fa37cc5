"""URLs of control.jobs: the API under api/v1/jobs and the /jobs/ pages."""

from django.urls import path

from control.jobs import api, views

urlpatterns = [
    path("api/v1/jobs", api.JobList.as_view(), name="job-list"),
    path("api/v1/jobs/<str:job_id>", api.JobDetail.as_view(), name="job-detail"),
    path("api/v1/jobs/<str:job_id>/cancel", api.JobCancel.as_view(), name="job-cancel"),
    path("jobs/", views.job_list, name="jobs"),
    path("jobs/<str:job_id>/", views.job_detail, name="job"),
]
