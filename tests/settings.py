"""Settings for the test suite: the project's settings, a test-only secret, PostgreSQL by default.

Tests make their own databases; Django's ``default`` connection is pointed at one of them by
``django_db_setup`` (tests/conftest.py), so it must be a PostgreSQL connection to begin with.
"""
import os

os.environ.setdefault("SECRET_KEY", "test-only-secret-key-not-for-production")
# The test client speaks plain HTTP, and pages render without running collectstatic first.
os.environ.setdefault("SECURE_SSL_REDIRECT", "false")
os.environ.setdefault("STATICFILES_BACKEND", "django.contrib.staticfiles.storage.StaticFilesStorage")
os.environ.setdefault(
    "DATABASE_URL",
    os.environ.get("TEST_POSTGRES_URL", "postgresql://postgres@127.0.0.1:5432/postgres").replace("+psycopg", ""),
)

from reautomation.settings import *  # noqa: E402,F401,F403

# Nothing is collected for in-process tests: WhiteNoise has no directory to serve (the browser
# test runs collectstatic and a real server with the production settings).
STATIC_ROOT = None
