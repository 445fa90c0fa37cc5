"""The Switchyard Django project: settings, URLs, ASGI and Celery apps, and the fleet/metrics/live apps."""

from dashboard.celery import app as celery_app

__all__ = ["celery_app"]
