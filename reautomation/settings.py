"""Django settings, from the environment (and an optional ``.env`` file); see README "Configuration"."""
from __future__ import annotations

from pathlib import Path

import environ

from reautomation import setting_values
from schema_engine.database import database_config
from schema_engine.replicas import REPLICA_ALIAS

BASE_DIR = Path(__file__).resolve().parent.parent

env = environ.Env()
# ENV_FILE names another file (or none: /dev/null), e.g. for a service manager's own env file.
environ.Env.read_env(env.str("ENV_FILE", default=str(BASE_DIR / ".env")), overwrite=False)

DEBUG = env.bool("DEBUG", default=False)
SECRET_KEY = env.str("SECRET_KEY", default="")
if not SECRET_KEY:
    if not DEBUG:
        raise environ.ImproperlyConfigured(
            "SECRET_KEY is not set: export SECRET_KEY (or put it in .env), or set DEBUG=true for local use"
        )
    SECRET_KEY = "insecure-local-development-key"  # noqa: S105 - only ever with DEBUG on
ALLOWED_HOSTS = env.list("ALLOWED_HOSTS", default=["localhost", "127.0.0.1"] if DEBUG else [])

# Without DEBUG a missing DATABASE_URL is an error: an operator who forgot to export it must not
# migrate or inspect an embedded file that nobody deploys.
DATABASES = {"default": database_config(env.str("DATABASE_URL", default=""), sqlite_path=BASE_DIR / "db.sqlite3",
                                        embedded_allowed=DEBUG)}
# Production topology (docs/topology.md): DATABASE_URL may reach PostgreSQL through
# PgBouncer in transaction pooling mode (DATABASE_POOL_MODE=transaction). A transaction then gets
# any server connection: no server-side cursors, no prepared statements (PgBouncer before 1.21
# cannot carry them), no connection kept by Django. What needs a session of its own (the migration
# lock and timeouts, the backfill's coordination) uses MIGRATION_DATABASE_URL, the primary itself,
# and is refused without it (schema_engine.database.session_url).
DATABASE_POOL_MODE = setting_values.choice(env, "DATABASE_POOL_MODE", default="session",
                                           choices=("session", "transaction"))
if DATABASE_POOL_MODE == "transaction":
    DATABASES["default"].update(DISABLE_SERVER_SIDE_CURSORS=True, CONN_MAX_AGE=0)
    DATABASES["default"].setdefault("OPTIONS", {})["prepare_threshold"] = None
MIGRATION_DATABASE = (database_config(env.str("MIGRATION_DATABASE_URL"), sqlite_path=BASE_DIR / "db.sqlite3",
                                      setting="MIGRATION_DATABASE_URL")
                      if env.str("MIGRATION_DATABASE_URL", default="") else None)
# A streaming replica (docs/topology.md): the admin's read-only pages read from it
# through reautomation/replica_reads.py while it answers and lags at most DATABASE_REPLICA_MAX_LAG
# seconds; otherwise from the primary, and the page says so. Direct, not through the pooler.
if env.str("DATABASE_REPLICA_URL", default=""):
    DATABASES[REPLICA_ALIAS] = database_config(env.str("DATABASE_REPLICA_URL"), sqlite_path=BASE_DIR / "db.sqlite3",
                                           setting="DATABASE_REPLICA_URL")
    DATABASES[REPLICA_ALIAS].setdefault("OPTIONS", {})["connect_timeout"] = 3
    DATABASES[REPLICA_ALIAS]["TEST"] = {"MIRROR": "default"}
DATABASE_ROUTERS = ["reautomation.replica_reads.ReplicaRouter"]
DATABASE_REPLICA_MAX_LAG = setting_values.seconds(env, "DATABASE_REPLICA_MAX_LAG", default=10)
# migrate_schema upgrade waits this long for every streaming replica to replay each revision.
MIGRATION_REPLICA_WAIT_SECONDS = setting_values.seconds(env, "MIGRATION_REPLICA_WAIT_SECONDS", default=120)
# Where the Alembic revisions live; alembic.ini's script_location unless set (tests use a copy).
ALEMBIC_SCRIPT_LOCATION = env.str("ALEMBIC_SCRIPT_LOCATION", default="")
DEFAULT_AUTO_FIELD = "django.db.models.BigAutoField"
# Index names follow the schema's naming convention, up to PostgreSQL's 63 characters;
# Django's 30-character limit exists for Oracle, which this project does not run on.
SILENCED_SYSTEM_CHECKS = ["models.E034"]

INSTALLED_APPS = [
    "reautomation",
    "calls",
    "monitoring",
    "reautomation.admin_config.OperatorAdminConfig",
    "django.contrib.auth",
    "django.contrib.contenttypes",
    "django.contrib.sessions",
    "django.contrib.messages",
    "django.contrib.staticfiles",
]
# Alembic owns every table, Django's own included: Django's migrations are switched off, for
# every app by its label (the admin's label is "admin", whatever its config class is called;
# tests/reautomation/test_settings.py checks that every installed app is listed).
MIGRATION_MODULES = {label: None for label in (
    "reautomation", "calls", "monitoring", "admin", "auth", "contenttypes", "sessions", "messages", "staticfiles")}

MIDDLEWARE = [
    "django.middleware.security.SecurityMiddleware",
    # Static files in production: served by the app server itself, compressed, cached for ever
    # under hashed names (``manage.py collectstatic`` first). See docs/admin.md, "Production".
    "whitenoise.middleware.WhiteNoiseMiddleware",
    "django.contrib.sessions.middleware.SessionMiddleware",
    "django.middleware.common.CommonMiddleware",
    "django.middleware.csrf.CsrfViewMiddleware",
    "django.contrib.auth.middleware.AuthenticationMiddleware",
    "django.contrib.messages.middleware.MessageMiddleware",
    # After authentication (the session and the user come from the primary): GET pages read from the replica.
    "reautomation.replica_reads.ReplicaReadsMiddleware",
    "django.middleware.clickjacking.XFrameOptionsMiddleware",
]

ROOT_URLCONF = "reautomation.urls"
WSGI_APPLICATION = "reautomation.wsgi.application"
TEMPLATES = [
    {
        "BACKEND": "django.template.backends.django.DjangoTemplates",
        "DIRS": [BASE_DIR / "reautomation" / "templates"],
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

AUTH_PASSWORD_VALIDATORS = [
    {"NAME": "django.contrib.auth.password_validation.UserAttributeSimilarityValidator"},
    {"NAME": "django.contrib.auth.password_validation.MinimumLengthValidator"},
    {"NAME": "django.contrib.auth.password_validation.CommonPasswordValidator"},
    {"NAME": "django.contrib.auth.password_validation.NumericPasswordValidator"},
]

LANGUAGE_CODE = "en-us"
TIME_ZONE = "UTC"
USE_I18N = True
USE_TZ = True

STATIC_URL = "static/"
STATIC_ROOT = env.path("STATIC_ROOT", default=BASE_DIR / "var" / "static")
STORAGES = {
    "default": {"BACKEND": "django.core.files.storage.FileSystemStorage"},
    "staticfiles": {"BACKEND": env.str("STATICFILES_BACKEND",
                                       default="whitenoise.storage.CompressedManifestStaticFilesStorage")},
}

# HTTPS: on by default without DEBUG (``manage.py check --deploy`` is clean); each can be turned
# off, e.g. for a plain-HTTP smoke test on localhost. Behind a proxy that terminates TLS, set
# SECURE_PROXY_SSL_HEADER=true so Django sees the original scheme from X-Forwarded-Proto.
SECURE_SSL_REDIRECT = env.bool("SECURE_SSL_REDIRECT", default=not DEBUG)
SESSION_COOKIE_SECURE = env.bool("SESSION_COOKIE_SECURE", default=not DEBUG)
CSRF_COOKIE_SECURE = env.bool("CSRF_COOKIE_SECURE", default=not DEBUG)
# An hour to start with: raise it once every host name is known to be served over HTTPS.
SECURE_HSTS_SECONDS = env.int("SECURE_HSTS_SECONDS", default=0 if DEBUG else 3600)
# These bind every subdomain of the site's domain: a decision for whoever owns the domain.
SECURE_HSTS_INCLUDE_SUBDOMAINS = env.bool("SECURE_HSTS_INCLUDE_SUBDOMAINS", default=False)
SECURE_HSTS_PRELOAD = env.bool("SECURE_HSTS_PRELOAD", default=False)
if env.bool("SECURE_PROXY_SSL_HEADER", default=False):
    SECURE_PROXY_SSL_HEADER = ("HTTP_X_FORWARDED_PROTO", "https")
CSRF_TRUSTED_ORIGINS = env.list("CSRF_TRUSTED_ORIGINS", default=[])

# migrate_schema on PostgreSQL (schema_engine/guard.py): how long a second migrator waits
# for the first; how long DDL may wait for a table lock before it gives up and retries.
# Each is checked for its shape (reautomation/setting_values.py): a bad value stops start-up in one line.
MIGRATION_LOCK_WAIT_SECONDS = setting_values.seconds(env, "MIGRATION_LOCK_WAIT_SECONDS", default=900)
MIGRATION_LOCK_TIMEOUT = setting_values.duration(env, "MIGRATION_LOCK_TIMEOUT", default="5s")
MIGRATION_LOCK_RETRIES = setting_values.count(env, "MIGRATION_LOCK_RETRIES", default=5)
MIGRATION_RETRY_PAUSE_SECONDS = setting_values.seconds(env, "MIGRATION_RETRY_PAUSE_SECONDS", default=2)
MIGRATION_STATEMENT_TIMEOUT = setting_values.duration(env, "MIGRATION_STATEMENT_TIMEOUT", default="30min")
# Opt-in (0: off): a session idle in a transaction longer than this that blocks a migration's
# DDL is terminated before the retry (never an active query). Plan warns of transactions open
# longer than MIGRATION_LONG_TRANSACTION_SECONDS on the tables pending revisions touch.
MIGRATION_TERMINATE_IDLE_BLOCKERS_AFTER = setting_values.seconds(env, "MIGRATION_TERMINATE_IDLE_BLOCKERS_AFTER",
                                                                 default=0)
MIGRATION_LONG_TRANSACTION_SECONDS = setting_values.seconds(env, "MIGRATION_LONG_TRANSACTION_SECONDS", default=60)

# backfill_context on PostgreSQL: a batch waits at most this long for a row lock, and runs at most
# this long; past either it is halved and retried (calls/backfill/workers.py).
BACKFILL_LOCK_TIMEOUT = setting_values.duration(env, "BACKFILL_LOCK_TIMEOUT", default="5s")
BACKFILL_STATEMENT_TIMEOUT = setting_values.duration(env, "BACKFILL_STATEMENT_TIMEOUT", default="5min")
# How long a batch should take: each worker sizes its batches to it (calls/backfill/pacing.py).
BACKFILL_BATCH_SECONDS = setting_values.seconds(env, "BACKFILL_BATCH_SECONDS", default=0.2, positive=True)
# The workers' CPU priority on their host (Unix nice, 0 to 19): above 0, live requests come first.
BACKFILL_NICE = setting_values.count(env, "BACKFILL_NICE", default=10, maximum=19)
# The workers hold while a streaming replica is further behind than this (seconds; 0: never hold).
BACKFILL_MAX_REPLICA_LAG = setting_values.seconds(env, "BACKFILL_MAX_REPLICA_LAG", default=10)

# migrate_schema forecast (schema_engine/forecast/verdict.py) refuses a deploy (exit 3) whose forecast passes one:
# - the longest a replayed statement waited on a revision's locks: 5s, the lock_timeout the revisions
#   themselves get (MIGRATION_LOCK_TIMEOUT), past which a request is an error to its caller, not a slow page;
# - all pending revisions together: 10 minutes, a deploy window an operator watches, a third of
#   MIGRATION_STATEMENT_TIMEOUT so that the copy's slower disk does not hide a timeout;
# - the replica lag a revision causes: 30s, three times DATABASE_REPLICA_MAX_LAG (reads move to the primary
#   for that long) and well inside MIGRATION_REPLICA_WAIT_SECONDS (the upgrade would refuse).
FORECAST_MAX_WRITER_WAIT_SECONDS = setting_values.seconds(env, "FORECAST_MAX_WRITER_WAIT_SECONDS", default=5)
FORECAST_MAX_DURATION_SECONDS = setting_values.seconds(env, "FORECAST_MAX_DURATION_SECONDS", default=600)
FORECAST_MAX_REPLICA_LAG_SECONDS = setting_values.seconds(env, "FORECAST_MAX_REPLICA_LAG_SECONDS", default=30)
# The last forecast (JSON, 0600, in a 0700 folder) that the admin's schema page shows beside the plan.
FORECAST_LAST_FILE = env.path("FORECAST_LAST_FILE", default=BASE_DIR / "var" / "forecast" / "last.json")

# Token counting and the context policy (calls/tokens.py, calls/context_policy.py).
TOKEN_ENCODING = env.str("TOKEN_ENCODING", default="cl100k_base")
CONTEXT_MAX_TOKENS = setting_values.count(env, "CONTEXT_MAX_TOKENS", default=8192, minimum=1)
CONTEXT_TARGET_TOKENS = setting_values.count(env, "CONTEXT_TARGET_TOKENS", default=6144, minimum=1)
CONTEXT_KEEP_RECENT_MESSAGES = setting_values.count(env, "CONTEXT_KEEP_RECENT_MESSAGES", default=4)
CONTEXT_TOKENS_PER_MESSAGE = setting_values.count(env, "CONTEXT_TOKENS_PER_MESSAGE", default=3)
CONTEXT_REPLY_PRIMING_TOKENS = setting_values.count(env, "CONTEXT_REPLY_PRIMING_TOKENS", default=3)

# Errors: a 500's traceback goes to stderr (gunicorn's error log), and by mail to ADMINS when set
# (comma-separated addresses; EMAIL_URL, e.g. smtp://user:pass@mail:587, names the mail server).
ADMINS = [(address, address) for address in env.list("ADMINS", default=[])]
SERVER_EMAIL = env.str("SERVER_EMAIL", default="root@localhost")
EMAIL_CONFIG = env.email_url("EMAIL_URL", default="smtp://localhost:25")
vars().update(EMAIL_CONFIG)
LOGGING = {
    "version": 1,
    "disable_existing_loggers": False,
    "filters": {"require_debug_false": {"()": "django.utils.log.RequireDebugFalse"}},
    "formatters": {"plain": {"format": "{asctime} {levelname} {name}: {message}", "style": "{"}},
    "handlers": {
        "stderr": {"class": "logging.StreamHandler", "formatter": "plain"},
        "mail_admins": {"class": "django.utils.log.AdminEmailHandler", "level": "ERROR",
                        "filters": ["require_debug_false"]},
    },
    "loggers": {
        "django": {"handlers": ["stderr", "mail_admins"], "level": env.str("DJANGO_LOG_LEVEL", default="WARNING"),
                   "propagate": False},
    },
}
