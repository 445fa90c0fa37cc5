"""What the dashboard and the control plane both stand on: the append-only audit (core.audit), roles (core.roles),
API-token secrets (core.tokens) and the API's error format (core.api_errors).

Imports run one way: core imports neither `dashboard` nor `control`; the dashboard's base apps (accounts, fleet,
metrics) import core; `control` imports both; the pages (dashboard.live) and the project (settings, urls, asgi,
celery, the demo) import anything. tests/test_layers.py holds every module to it.
"""
