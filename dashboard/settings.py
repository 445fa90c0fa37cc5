"""Django settings, read from SWITCHYARD_* environment variables (README has the table).

Secure by default: DEBUG is off unless asked for, the secret key is generated once and kept in the var dir with
mode 0600 when none is given, and only loopback hosts are allowed until SWITCHYARD_ALLOWED_HOSTS says otherwise.
"""

from __future__ import annotations

import os
import secrets
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, unquote, urlparse

from celery.schedules import crontab

from core import embedded

BASE_DIR = Path(__file__).resolve().parent.parent


def env(name: str, default: str = "") -> str:
    return os.environ.get(f"SWITCHYARD_{name}", default)


def env_bool(name: str, default: bool = False) -> bool:
    raw = env(name)
    if not raw:
        return default
    return raw.strip().lower() in {"1", "true", "yes", "on"}


def env_int(name: str, default: int) -> int:
    raw = env(name)
    try:
        return int(raw) if raw else default
    except ValueError as exc:
        raise ValueError(f"SWITCHYARD_{name} must be an integer, got {raw!r}") from exc


def env_float(name: str, default: float, lo: float, hi: float) -> float:
    raw = env(name)
    try:
        value = float(raw) if raw else default
    except ValueError as exc:
        raise ValueError(f"SWITCHYARD_{name} must be a number, got {raw!r}") from exc
    if not lo <= value <= hi:
        raise ValueError(f"SWITCHYARD_{name} must be between {lo:g} and {hi:g}, got {raw!r}")
    return value


def env_list(name: str, default: str) -> list[str]:
    return [item.strip() for item in env(name, default).split(",") if item.strip()]


def database_from_url(url: str) -> dict[str, Any]:
    """postgres://user:pass@host:port/name?host=/socket/dir&sslmode=... -> Django DATABASES entry."""
    parsed = urlparse(url)
    if parsed.scheme not in {"postgres", "postgresql"}:
        raise ValueError(f"SWITCHYARD_DATABASE_URL must be a postgresql:// URL, got scheme {parsed.scheme!r}")
    query = {k: v[-1] for k, v in parse_qs(parsed.query).items()}
    host = query.pop("host", None) or (unquote(parsed.hostname) if parsed.hostname else "")
    return {
        "ENGINE": "django.db.backends.postgresql",
        "NAME": unquote(parsed.path.lstrip("/")) or "switchyard",
        "USER": unquote(parsed.username or ""),
        "PASSWORD": unquote(parsed.password or ""),
        "HOST": host,
        "PORT": str(parsed.port or ""),
        "OPTIONS": query,
        # Persistent connections matter on the ingest path: a connect per push would cost more than the COPY.
        "CONN_MAX_AGE": env_int("DB_CONN_MAX_AGE", 300),
        "CONN_HEALTH_CHECKS": True,
    }


def _secret_key() -> str:
    given = env("SECRET_KEY")
    if given:
        return given
    path = embedded.var_dir() / "secret_key"
    if not path.exists():
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        with os.fdopen(fd, "w") as fh:
            fh.write(secrets.token_urlsafe(50))
    return path.read_text().strip()


DEBUG = env_bool("DEBUG", False)
SECRET_KEY = _secret_key()
ALLOWED_HOSTS = env_list("ALLOWED_HOSTS", "localhost,127.0.0.1,[::1],testserver")
CSRF_TRUSTED_ORIGINS = env_list("CSRF_TRUSTED_ORIGINS", "")

DATABASE_URL = env("DATABASE_URL") or embedded.postgres_url()
REDIS_URL = env("REDIS_URL") or embedded.redis_url()
DATABASES = {"default": database_from_url(DATABASE_URL)}
DEFAULT_AUTO_FIELD = "django.db.models.BigAutoField"

INSTALLED_APPS = [
    "django.contrib.admin",
    "django.contrib.auth",
    "django.contrib.contenttypes",
    "django.contrib.sessions",
    "django.contrib.messages",
    "django.contrib.staticfiles",
    "rest_framework",
    "drf_spectacular",
    "drf_spectacular_sidecar",
    "channels",
    "dashboard.accounts",
    "dashboard.fleet",
    "dashboard.metrics",
    "dashboard.live",
    "pgtrigger",
    "core.audit",
    "control.policy",
    "control.nodes",
    "control.scheduler",
    "control.alerts",
    "control.webhooks",
    "control.routing",
    "control.jobs",
    "control.loadgen",
    "control.controller",
    "control.tokens",
    "control.canary",
    # The project package itself, for the commands that drive every part at once (`manage.py demo`).
    "dashboard",
]

MIDDLEWARE = [
    "django.middleware.security.SecurityMiddleware",
    "core.audit.middleware.RequestIdMiddleware",
    "whitenoise.middleware.WhiteNoiseMiddleware",
    "django.contrib.sessions.middleware.SessionMiddleware",
    "django.middleware.common.CommonMiddleware",
    "django.middleware.csrf.CsrfViewMiddleware",
    "django.contrib.auth.middleware.AuthenticationMiddleware",
    "django.contrib.messages.middleware.MessageMiddleware",
    "django.middleware.clickjacking.XFrameOptionsMiddleware",
]

ROOT_URLCONF = "dashboard.urls"
ASGI_APPLICATION = "dashboard.asgi.application"
WSGI_APPLICATION = None

TEMPLATES = [
    {
        "BACKEND": "django.template.backends.django.DjangoTemplates",
        "DIRS": [BASE_DIR / "dashboard" / "templates"],
        "APP_DIRS": True,
        "OPTIONS": {
            "context_processors": [
                "django.template.context_processors.request",
                "django.contrib.auth.context_processors.auth",
                "django.contrib.messages.context_processors.messages",
                "core.roles.role_context",
            ],
        },
    },
]

AUTH_PASSWORD_VALIDATORS = [
    {"NAME": "django.contrib.auth.password_validation.MinimumLengthValidator"},
    {"NAME": "django.contrib.auth.password_validation.CommonPasswordValidator"},
]
LOGIN_URL = "/accounts/login/"
# Sign-in throttle (dashboard/accounts/throttle.py): failures per user name and per client address in one window.
LOGIN_MAX_FAILURES_PER_USER = env_int("LOGIN_MAX_FAILURES_PER_USER", 10)
LOGIN_MAX_FAILURES_PER_ADDRESS = env_int("LOGIN_MAX_FAILURES_PER_ADDRESS", 50)
LOGIN_WINDOW_S = env_int("LOGIN_WINDOW_S", 900)
LOGIN_REDIRECT_URL = "/"
LOGOUT_REDIRECT_URL = "/accounts/login/"

LANGUAGE_CODE = "en-us"
TIME_ZONE = "UTC"
USE_I18N = False
USE_TZ = True

STATIC_URL = "/static/"
# A checkout serves static/ from the tree. An installed wheel has no static/ beside its packages (the image collects
# it into STATIC_ROOT when it is built), and a missing directory here would make every command warn.
STATICFILES_DIRS = [d for d in [BASE_DIR / "static"] if d.is_dir()]
STATIC_ROOT = embedded.var_dir() / "staticfiles"
STATIC_ROOT.mkdir(exist_ok=True)
# Serve straight from STATICFILES_DIRS/app dirs: no collectstatic step between `git clone` and a working page.
WHITENOISE_USE_FINDERS = True
WHITENOISE_AUTOREFRESH = DEBUG

SESSION_COOKIE_HTTPONLY = True
SESSION_COOKIE_SECURE = env_bool("SECURE_COOKIES", False)
CSRF_COOKIE_SECURE = SESSION_COOKIE_SECURE
X_FRAME_OPTIONS = "DENY"
SECURE_CONTENT_TYPE_NOSNIFF = True

# --- Ingest and storage ---------------------------------------------------------------------------------------
INGEST_MAX_BYTES = env_int("INGEST_MAX_BYTES", 4 * 1024 * 1024)
INGEST_MAX_SAMPLES = env_int("INGEST_MAX_SAMPLES", 1000)
INGEST_RATE_PER_MINUTE = env_int("INGEST_RATE_PER_MINUTE", 600)
# The most an ingest worker's committer waits for more pushes to share a commit (dashboard/fleet/group_commit.py):
# a commit costs about as much as a dozen pushes' checking, so under load a short wait makes each push cheaper. It
# waits about as long as 16 pushes take to arrive at the rate it measures, up to this; not at all when not even one
# more push is expected within it. 100 ms lets a worker taking 100 pushes/s (1,000 nodes every 5 s on 2 workers) form
# groups of about 10 (50 ms made about 4, and a commit's fixed cost then cost more CPU per value than Prometheus's
# whole scrape); the added latency (push p95 about 110 ms there) stays far under the 250 ms an agent's push allows.
# Above 160 pushes/s a worker the 16-push aim is reached sooner, so the cap no longer adds anything.
INGEST_GROUP_WAIT_MS = env_int("INGEST_GROUP_WAIT_MS", 100)
INGEST_MAX_FUTURE_S = 300
AGENT_INTERVAL_S = env_int("AGENT_INTERVAL_S", 5)
STALE_AFTER_INTERVALS = env_int("STALE_AFTER_INTERVALS", 3)
PARTITIONS_AHEAD_DAYS = env_int("PARTITIONS_AHEAD_DAYS", 3)
RETENTION_RAW_DAYS = env_int("RETENTION_RAW_DAYS", 7)
RETENTION_1M_DAYS = env_int("RETENTION_1M_DAYS", 90)
RETENTION_1H_DAYS = env_int("RETENTION_1H_DAYS", 730)
DATA_UPLOAD_MAX_MEMORY_SIZE = INGEST_MAX_BYTES

# --- Live view ---------------------------------------------------------------------------------------------
# Seconds between two frames of one topic: a changed cell reaches browsers within one tick (plus the build), and
# a browser gets at most 1 / LIVE_TICK_S messages a second per topic whatever the push rate.
LIVE_TICK_S = env_float("LIVE_TICK_S", 0.5, 0.05, 10.0)

# --- Redis, Channels, Celery ------------------------------------------------------------------------------------
CHANNEL_LAYERS = {
    "default": {
        "BACKEND": "channels_redis.core.RedisChannelLayer",
        "CONFIG": {"hosts": [REDIS_URL]},
    }
}
CELERY_BROKER_URL = REDIS_URL
CELERY_RESULT_BACKEND = REDIS_URL
CELERY_TASK_SERIALIZER = "json"
CELERY_ACCEPT_CONTENT = ["json"]
CELERY_TIMEZONE = "UTC"
CELERY_TASK_ACKS_LATE = True
CELERY_WORKER_PREFETCH_MULTIPLIER = 1
CELERY_BEAT_SCHEDULE = {
    "rollup-1m": {"task": "dashboard.metrics.tasks.rollup_minutes", "schedule": 60.0},
    "rollup-1h": {"task": "dashboard.metrics.tasks.rollup_hours", "schedule": 300.0},
    "partitions-ahead": {"task": "dashboard.metrics.tasks.ensure_partitions", "schedule": 3600.0},
    "retention": {"task": "dashboard.metrics.tasks.apply_retention", "schedule": crontab(minute=17)},
    "alerts-evaluate": {"task": "control.alerts.tasks.evaluate", "schedule": 10.0},
    "webhooks-deliver": {"task": "control.webhooks.tasks.deliver_due", "schedule": 5.0},
    "routing-aggregate": {"task": "control.routing.tasks.aggregate", "schedule": 10.0},
    # The controller: autoscaling, power caps and the guard every 15 s; forecasts every 5 minutes.
    "controller-tick": {"task": "control.controller.tasks.tick", "schedule": 15.0},
    "controller-forecast": {"task": "control.controller.tasks.forecast", "schedule": 300.0},
    # Canary analysis: each canary's own interval_s decides when it really runs.
    "canary-analysis": {"task": "control.canary.tasks.analyse", "schedule": 5.0},
}

# --- REST API --------------------------------------------------------------------------------------------------
REST_FRAMEWORK = {
    "DEFAULT_AUTHENTICATION_CLASSES": [
        "dashboard.accounts.auth.UserTokenAuthentication",
        "rest_framework.authentication.SessionAuthentication",
    ],
    "DEFAULT_PERMISSION_CLASSES": ["core.roles.IsViewer"],
    "DEFAULT_RENDERER_CLASSES": ["rest_framework.renderers.JSONRenderer"],
    "DEFAULT_SCHEMA_CLASS": "drf_spectacular.openapi.AutoSchema",
    "EXCEPTION_HANDLER": "core.api_errors.exception_handler",
    "DEFAULT_PAGINATION_CLASS": "rest_framework.pagination.LimitOffsetPagination",
    "PAGE_SIZE": 100,
}
SPECTACULAR_SETTINGS = {
    "TITLE": "Switchyard API",
    "DESCRIPTION": "Monitoring and control plane for GPU inference fleets.",
    "VERSION": "1",
    "SWAGGER_UI_DIST": "SIDECAR",
    "SWAGGER_UI_FAVICON_HREF": "SIDECAR",
    "REDOC_DIST": "SIDECAR",
    "SERVE_INCLUDE_SCHEMA": False,
    "SERVE_PERMISSIONS": ["core.roles.IsViewer"],
}

LOGGING = {
    "version": 1,
    "disable_existing_loggers": False,
    "formatters": {"plain": {"format": "%(asctime)s %(levelname)s %(name)s %(message)s"}},
    "handlers": {"console": {"class": "logging.StreamHandler", "formatter": "plain"}},
    "root": {"handlers": ["console"], "level": env("LOG_LEVEL", "INFO")},
    # httpx logs every request URL at INFO; receiver URLs (Slack incoming webhooks) carry their secret in the path.
    "loggers": {"pgserver": {"level": "WARNING"}, "httpx": {"level": "WARNING"}, "httpcore": {"level": "WARNING"}},
}

# --- gateway, jobs, webhooks -------------------------------------------------------------------------------------
# Where Celery jobs send their work (the gateway routes it like any other request) and the URL alerts link back to.
GATEWAY_URL = env("GATEWAY_URL", "http://127.0.0.1:8400")
GATEWAY_METRICS_PUBLIC = env_bool("GATEWAY_METRICS_PUBLIC", False)  # the gateway's /metrics without a viewer token
# Precise prefix routing (prefix.source kv_events): ZMQ addresses the gateway binds to take the engines' KV-cache
# events (they connect), comma-separated; connect:tcp://host:port connects to an engine that binds instead.
GATEWAY_KV_EVENTS = env("GATEWAY_KV_EVENTS", "")
EXTERNAL_URL = env("EXTERNAL_URL", "http://127.0.0.1:8000")
# Total seconds one job shard may wait on the gateway's Retry-After before the job fails.
JOBS_MAX_WAIT_S = env_int("JOBS_MAX_WAIT_S", 3600)
