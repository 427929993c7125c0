"""Django settings, read from the environment with defaults that run with zero configuration.

No DATABASE_URL -> SQLite under var/. No REDIS_URL -> in-memory channel layer and Celery over a
folder (var/celery), consumed by the worker ``./run serve`` starts.
"""

from __future__ import annotations

import os
import re
from pathlib import Path

import dj_database_url
from django.core.exceptions import ImproperlyConfigured

from apps.marketdata.kalshi.signer import SignerError, check_key_id
from kalshiflow_site.env import env_bool, env_float, env_int, env_secret, env_str
from kalshiflow_site.modes import LiveTradingRefused, validate_mode

BASE_DIR = Path(__file__).resolve().parent.parent
VAR_DIR = Path(env_str("RL_VAR_DIR", str(BASE_DIR / "var")))
VAR_DIR.mkdir(parents=True, exist_ok=True)

DEBUG = env_bool("DEBUG", False)
SECRET_KEY = env_secret("SECRET_KEY")
if not SECRET_KEY:
    if not DEBUG and env_bool("RL_REQUIRE_SECRET_KEY", False):
        raise ImproperlyConfigured("SECRET_KEY (or SECRET_KEY_FILE) must be set in production")
    # A per-checkout development key, generated once, so nothing secret is committed.
    _key_file = VAR_DIR / "dev-secret-key"
    if not _key_file.exists():
        import secrets

        _key_file.write_text(secrets.token_urlsafe(50))
        _key_file.chmod(0o600)
    SECRET_KEY = _key_file.read_text().strip()

ALLOWED_HOSTS = [h for h in env_str("ALLOWED_HOSTS", "127.0.0.1,localhost").split(",") if h]
CSRF_TRUSTED_ORIGINS = [o for o in env_str("CSRF_TRUSTED_ORIGINS", "").split(",") if o]

try:
    RL_MODE = validate_mode(env_str("RL_MODE", "paper"), source="RL_MODE")
except LiveTradingRefused as exc:
    raise ImproperlyConfigured(str(exc)) from None

INSTALLED_APPS = [
    "daphne",
    "django.contrib.admin",
    "django.contrib.auth",
    "django.contrib.contenttypes",
    "django.contrib.sessions",
    "django.contrib.messages",
    "django.contrib.staticfiles",
    "channels",
    "apps.ui",
    "apps.workers",
    "apps.marketdata",
    "apps.simulation",
    "apps.training",
    "apps.trading",
    "apps.dashboard",
]

MIDDLEWARE = [
    "django.middleware.security.SecurityMiddleware",
    "django.contrib.sessions.middleware.SessionMiddleware",
    "django.middleware.common.CommonMiddleware",
    "django.middleware.csrf.CsrfViewMiddleware",
    "django.contrib.auth.middleware.AuthenticationMiddleware",
    "django.contrib.messages.middleware.MessageMiddleware",
    "django.middleware.clickjacking.XFrameOptionsMiddleware",
]

ROOT_URLCONF = "kalshiflow_site.urls"
TEMPLATES = [
    {
        "BACKEND": "django.template.backends.django.DjangoTemplates",
        "DIRS": [BASE_DIR / "templates"],
        "APP_DIRS": True,
        "OPTIONS": {
            "context_processors": [
                "django.template.context_processors.request",
                "django.contrib.auth.context_processors.auth",
                "django.contrib.messages.context_processors.messages",
            ],
        },
    },
]
WSGI_APPLICATION = None
ASGI_APPLICATION = "kalshiflow_site.asgi.application"

DATABASES = {
    "default": dj_database_url.parse(
        env_str("DATABASE_URL", f"sqlite:///{VAR_DIR / 'kalshiflow.sqlite3'}"),
        conn_max_age=env_int("DB_CONN_MAX_AGE", 0, minimum=0),
    )
}
if DATABASES["default"]["ENGINE"] == "django.db.backends.sqlite3":
    # The embedded database is shared by the recorder's writer thread, heartbeats and the
    # paper trader: WAL lets readers and one writer overlap, IMMEDIATE transactions take the
    # write lock up front (no lock-upgrade deadlock) and a writer waits instead of failing.
    DATABASES["default"]["OPTIONS"] = {
        "timeout": 30,
        "transaction_mode": "IMMEDIATE",
        "init_command": "PRAGMA journal_mode=WAL; PRAGMA synchronous=NORMAL;",
    }
DEFAULT_AUTO_FIELD = "django.db.models.BigAutoField"

AUTH_PASSWORD_VALIDATORS = [
    {"NAME": "django.contrib.auth.password_validation.MinimumLengthValidator"},
    {"NAME": "django.contrib.auth.password_validation.CommonPasswordValidator"},
]

LANGUAGE_CODE = "en-us"
TIME_ZONE = "UTC"
USE_I18N = False
USE_TZ = True

STATIC_URL = "static/"
STATIC_ROOT = VAR_DIR / "static"

# Production hardening, switched on by env so `check --deploy` is clean in production.
SECURE_SSL_REDIRECT = env_bool("SECURE_SSL_REDIRECT", False)
SESSION_COOKIE_SECURE = env_bool("SECURE_COOKIES", False)
CSRF_COOKIE_SECURE = env_bool("SECURE_COOKIES", False)
SECURE_HSTS_SECONDS = env_int("SECURE_HSTS_SECONDS", 0, minimum=0)
SECURE_HSTS_INCLUDE_SUBDOMAINS = env_bool("SECURE_HSTS_INCLUDE_SUBDOMAINS", False)
SECURE_HSTS_PRELOAD = env_bool("SECURE_HSTS_PRELOAD", False)
SECURE_PROXY_SSL_HEADER = (
    ("HTTP_X_FORWARDED_PROTO", "https") if env_bool("SECURE_PROXY_SSL", False) else None
)

# Redis: channel layer and Celery. Without REDIS_URL the channel layer is in-process and
# Celery's queue is a folder (kombu's filesystem transport), consumed by the worker that
# `./run serve` starts beside the web server: a task never runs inside a request.
REDIS_URL = env_str("REDIS_URL", "")
CELERY_TASK_ALWAYS_EAGER = False
if REDIS_URL:
    CHANNEL_LAYERS = {
        "default": {
            "BACKEND": "channels_redis.core.RedisChannelLayer",
            "CONFIG": {"hosts": [REDIS_URL]},
        }
    }
    CELERY_BROKER_URL = env_str("CELERY_BROKER_URL", REDIS_URL)
    CELERY_RESULT_BACKEND = env_str("CELERY_RESULT_BACKEND", REDIS_URL)
else:
    CHANNEL_LAYERS = {"default": {"BACKEND": "channels.layers.InMemoryChannelLayer"}}
    RL_CELERY_DIR = Path(env_str("RL_CELERY_DIR", str(VAR_DIR / "celery")))
    for _folder in ("queue", "control", "results"):
        (RL_CELERY_DIR / _folder).mkdir(parents=True, exist_ok=True)
    CELERY_BROKER_URL = "filesystem://localhost/"
    CELERY_BROKER_TRANSPORT_OPTIONS = {
        # One folder both ways: the web process writes the messages the worker reads.
        "data_folder_in": str(RL_CELERY_DIR / "queue"),
        "data_folder_out": str(RL_CELERY_DIR / "queue"),
        # Fanout bindings (the worker's remote control: ping, so the admin knows it is up).
        "control_folder": str(RL_CELERY_DIR / "control"),
        # Seconds between looks at the folders (kombu's default is 1 s): a ping answers fast.
        "polling_interval": 0.25,
    }
    CELERY_RESULT_BACKEND = f"file://{RL_CELERY_DIR / 'results'}"
# `./run serve` starts a Celery worker beside daphne when this is on (default: without Redis,
# where the queue is a local folder and nothing else would consume it).
RL_EMBEDDED_WORKER = env_bool("RL_EMBEDDED_WORKER", not REDIS_URL)
# How long the admin waits for a worker to answer a ping before it warns that a run queued
# now would wait.
RL_WORKER_PING_TIMEOUT_S = env_float("RL_WORKER_PING_TIMEOUT_S", 1.5, minimum=0.1)
CELERY_TASK_EAGER_PROPAGATES = True
CELERY_TASK_ACKS_LATE = True
CELERY_WORKER_PREFETCH_MULTIPLIER = 1
CELERY_TASK_SERIALIZER = "json"
CELERY_ACCEPT_CONTENT = ["json"]

# Kalshi credentials: read here, handed to the signer, never logged or stored.
KALSHI_API_KEY_ID = env_secret("KALSHI_API_KEY_ID")
# Where the key id came from, so that an authentication failure can say which setting to fix.
KALSHI_API_KEY_ID_SOURCE = next(
    (name for name in ("KALSHI_API_KEY_ID", "KALSHI_API_KEY_ID_FILE") if os.environ.get(name)), ""
)
if KALSHI_API_KEY_ID:
    try:
        check_key_id(KALSHI_API_KEY_ID)
    except SignerError as exc:
        raise ImproperlyConfigured(f"{KALSHI_API_KEY_ID_SOURCE}: {exc}") from None
KALSHI_PRIVATE_KEY_PATH = env_str("KALSHI_PRIVATE_KEY_PATH", "")
KALSHI_PRIVATE_KEY_PEM = env_secret("KALSHI_PRIVATE_KEY_PEM")

# The bundled local exchange: where it listens and where its development keys live.
LOCAL_EXCHANGE_HOST = env_str("LOCAL_EXCHANGE_HOST", "127.0.0.1")
LOCAL_EXCHANGE_PORT = env_int("LOCAL_EXCHANGE_PORT", 8765, minimum=0)
LOCAL_EXCHANGE_KEY_DIR = Path(env_str("LOCAL_EXCHANGE_KEY_DIR", str(VAR_DIR / "keys")))
LOCAL_EXCHANGE_MSG_RATE = env_float("LOCAL_EXCHANGE_MSG_RATE", 200.0, minimum=0.0)

# The batch writer (apps/marketdata/writer/): batching, memory bound, spill, retries. The
# recorder's; the paper trader's takes the method and the spill caps from here too.
RL_WRITER_METHOD = env_str("RL_WRITER_METHOD", "copy")  # copy (PostgreSQL) | bulk_create
RL_WRITER_BATCH_ROWS = env_int("RL_WRITER_BATCH_ROWS", 5000, minimum=1)
RL_WRITER_FLUSH_INTERVAL_S = env_float("RL_WRITER_FLUSH_INTERVAL_S", 0.25, minimum=0.001)
RL_WRITER_QUEUE_MAX_ROWS = env_int("RL_WRITER_QUEUE_MAX_ROWS", 200_000, minimum=1)
RL_WRITER_SPILL_DIR = Path(env_str("RL_WRITER_SPILL_DIR", str(VAR_DIR / "spill")))
RL_WRITER_STUCK_AFTER_S = env_float("RL_WRITER_STUCK_AFTER_S", 30.0, minimum=1.0)
# The spill's cap (about 6 hours of a 5k msg/s outage) and the free disk it always leaves.
RL_WRITER_SPILL_MAX_BYTES = env_int("RL_WRITER_SPILL_MAX_BYTES", 16 * 1024**3, minimum=1)
RL_WRITER_SPILL_MIN_FREE_BYTES = env_int("RL_WRITER_SPILL_MIN_FREE_BYTES", 256 * 1024**2, minimum=0)
# Recorded tables on PostgreSQL are time partitions (apps/marketdata/partitions.py): one per
# day or week (UTC), RL_PARTITION_AHEAD of them created ahead by the recorder and
# `manage.py partitions ensure`; archived partitions are Parquet files under RL_ARCHIVE_DIR.
RL_PARTITION_INTERVAL = env_str("RL_PARTITION_INTERVAL", "day").strip().lower()
if RL_PARTITION_INTERVAL not in ("day", "week"):
    raise ImproperlyConfigured(
        f"RL_PARTITION_INTERVAL must be day or week, not {RL_PARTITION_INTERVAL!r}"
    )
RL_PARTITION_AHEAD = env_int("RL_PARTITION_AHEAD", 3, minimum=1)
RL_PARTITION_ENSURE_S = env_float("RL_PARTITION_ENSURE_S", 3600.0, minimum=1.0)
RL_ARCHIVE_DIR = Path(env_str("RL_ARCHIVE_DIR", str(VAR_DIR / "archive")))
RL_FEED_SILENT_S = env_float("RL_FEED_SILENT_S", 30.0, minimum=1.0)
RL_HEARTBEAT_STALE_S = env_float("RL_HEARTBEAT_STALE_S", 15.0, minimum=1.0)
# Worker health (/rl/health, /rl/status, admin): a worker whose heartbeat is older than
# RL_HEARTBEAT_STALE_S is "silent" (unhealthy), older than RL_WORKER_DEAD_AFTER_S "dead" (shown,
# but no longer unhealthy by itself: a SIGKILLed process must not keep health red forever).
# RL_HEALTH_EXPECT lists what must run: "kind" or "kind:label" entries (e.g. "ingest,paper"),
# each unhealthy while no live worker matches it.
RL_WORKER_DEAD_AFTER_S = env_float("RL_WORKER_DEAD_AFTER_S", 300.0, minimum=1.0)
if RL_WORKER_DEAD_AFTER_S < RL_HEARTBEAT_STALE_S:
    raise ImproperlyConfigured(
        f"RL_WORKER_DEAD_AFTER_S={RL_WORKER_DEAD_AFTER_S:g} must be >= "
        f"RL_HEARTBEAT_STALE_S={RL_HEARTBEAT_STALE_S:g}"
    )
RL_HEALTH_EXPECT = [e.strip() for e in env_str("RL_HEALTH_EXPECT", "").split(",") if e.strip()]
for _expect in RL_HEALTH_EXPECT:
    if not re.fullmatch(r"[a-z][a-z0-9_-]{0,31}(:[A-Za-z0-9][A-Za-z0-9._-]{0,199})?", _expect):
        raise ImproperlyConfigured(
            f"RL_HEALTH_EXPECT entry {_expect!r} is not a worker kind or kind:label "
            "(e.g. ingest,paper:mymodel)"
        )
# A connection left open by a recorder on another host (or without a pid) is closed by the
# next recorder's start-up sweep once neither a heartbeat nor a row of it is younger than this
# (apps/marketdata/orphans.py); longer than any database outage a live recorder rides out.
RL_RECORDER_GONE_AFTER_S = env_float("RL_RECORDER_GONE_AFTER_S", 900.0, minimum=1.0)

# Kalshi rounds each fill's balance change to the account's precision, in $0.0001: 100 ($0.01,
# ordinary members) or 1 ($0.0001, direct members). The training env and the paper trader both
# use it (apps/simulation/fees.py).
RL_ACCOUNT_PRECISION_E4 = env_int("RL_ACCOUNT_PRECISION_E4", 100, minimum=1)
if RL_ACCOUNT_PRECISION_E4 not in (1, 100):
    raise ImproperlyConfigured(
        f"RL_ACCOUNT_PRECISION_E4={RL_ACCOUNT_PRECISION_E4} must be 100 ($0.01) or 1 ($0.0001)"
    )

MODEL_DIR = Path(env_str("MODEL_DIR", str(VAR_DIR / "models")))
RL_TRAINING_MAX_CONCURRENT = env_int("RL_TRAINING_MAX_CONCURRENT", 1, minimum=1)
# A run whose estimated arrays (histories, envs, rollout buffer) exceed this is refused.
RL_TRAINING_MEMORY_BUDGET_MB = env_int("RL_TRAINING_MEMORY_BUDGET_MB", 8192, minimum=64)
# Promotion gate. A model is promotable only when the lower bound of the 95 % interval of
# (agent - no trading) P&L per hour on held-out time is above zero (RL_PROMOTION_REQUIRE_EDGE,
# on by default) and, when set, its held-out Sharpe per sqrt(hour) of market time reaches
# RL_PROMOTION_MIN_SHARPE. Forcing past the gate needs a user and a reason, and is recorded.
RL_PROMOTION_REQUIRE_EDGE = env_bool("RL_PROMOTION_REQUIRE_EDGE", True)
_min_sharpe = env_str("RL_PROMOTION_MIN_SHARPE", "")
RL_PROMOTION_MIN_SHARPE = float(_min_sharpe) if _min_sharpe else None

# The operations surface (apps/dashboard): REST API, OpenAPI schema, live page.
# Staff only except /rl/health; errors are JSON. A staff session (log in at /admin/) always
# works; HTTP Basic (the password on every request) only with RL_API_BASIC_AUTH=true.
RL_API_BASIC_AUTH = env_bool("RL_API_BASIC_AUTH", False)
# Failed password attempts (admin login form, Basic auth) per client address and window, as
# DRF rates ("10/min", "100/hour"): beyond it, 429 until the window moves on.
RL_AUTH_FAILURE_RATE = env_str("RL_AUTH_FAILURE_RATE", "10/min").strip()
if not re.fullmatch(r"[1-9][0-9]{0,8}/(s|sec|m|min|h|hour|d|day)", RL_AUTH_FAILURE_RATE):
    raise ImproperlyConfigured(
        f"RL_AUTH_FAILURE_RATE={RL_AUTH_FAILURE_RATE!r} is not a rate like 10/min or 100/hour"
    )
# Reverse proxies in front of the server that append X-Forwarded-For: the client address is
# that header's N-th entry from the right; 0 = REMOTE_ADDR (a client-written header is ignored).
RL_NUM_PROXIES = env_int("RL_NUM_PROXIES", 0, minimum=0)
# The failed-login counts: shared by every server process through Redis when there is one.
CACHES = {
    "default": {"BACKEND": "django.core.cache.backends.locmem.LocMemCache"},
    "auth-throttle": (
        {
            "BACKEND": "django.core.cache.backends.redis.RedisCache",
            "LOCATION": REDIS_URL,
            "KEY_PREFIX": "rl-auth-throttle",
            # A hung Redis delays a login by at most this, then the throttle is skipped.
            "OPTIONS": {"socket_connect_timeout": 2, "socket_timeout": 2},
        }
        if REDIS_URL
        else {"BACKEND": "django.core.cache.backends.locmem.LocMemCache", "LOCATION": "auth"}
    ),
}
INSTALLED_APPS += ["rest_framework", "drf_spectacular", "drf_spectacular_sidecar"]
REST_FRAMEWORK = {
    "DEFAULT_AUTHENTICATION_CLASSES": [
        "apps.dashboard.api.authentication.StaffSessionAuthentication",
        "apps.dashboard.api.authentication.OptionalBasicAuthentication",
    ],
    "NUM_PROXIES": RL_NUM_PROXIES,
    "DEFAULT_PERMISSION_CLASSES": ["rest_framework.permissions.IsAdminUser"],
    "DEFAULT_RENDERER_CLASSES": ["rest_framework.renderers.JSONRenderer"],
    "DEFAULT_PAGINATION_CLASS": "apps.dashboard.api.pagination.Pages",
    "PAGE_SIZE": 50,
    "EXCEPTION_HANDLER": "apps.dashboard.api.errors.json_exception_handler",
    "DEFAULT_SCHEMA_CLASS": "apps.dashboard.api.schema.AutoSchema",
}
SPECTACULAR_SETTINGS = {
    "TITLE": "Kalshi Flow RL",
    "DESCRIPTION": "Recording, model registry, episodes and paper trading, read-only.",
    "VERSION": "1",
    "SERVE_INCLUDE_SCHEMA": False,
    "SERVE_PERMISSIONS": ["rest_framework.permissions.IsAdminUser"],
    "SWAGGER_UI_DIST": "SIDECAR",
    "SWAGGER_UI_FAVICON_HREF": "SIDECAR",
    "REDOC_DIST": "SIDECAR",
}
# Serve static files (admin, Swagger UI, live page) from the ASGI app itself, so that
# `daphne kalshiflow_site.asgi:application` runs the whole site offline with no web server.
RL_SERVE_STATIC = env_bool("RL_SERVE_STATIC", True)

LOG_LEVEL = env_str("LOG_LEVEL", "INFO")
LOGGING = {
    "version": 1,
    "disable_existing_loggers": False,
    "formatters": {
        "line": {"format": "%(asctime)s %(levelname)s %(name)s %(message)s"},
    },
    "handlers": {"console": {"class": "logging.StreamHandler", "formatter": "line"}},
    "root": {"handlers": ["console"], "level": LOG_LEVEL},
    "loggers": {
        "django.db.backends": {"level": "WARNING"},
        "websockets": {"level": "WARNING"},
    },
}
