"""Settings for the test suite: the project's settings, a test-only secret, PostgreSQL by default.

Tests make their own databases; Django's ``default`` connection is pointed at one of them by
``django_db_setup`` (tests/conftest.py), so it must be a PostgreSQL connection to begin with.
"""
import os

os.environ.setdefault("SECRET_KEY", "test-only-secret-key-not-for-production")
os.environ.setdefault(
    "DATABASE_URL",
    os.environ.get("TEST_POSTGRES_URL", "postgresql://postgres@127.0.0.1:5432/postgres").replace("+psycopg", ""),
)

from reautomation.settings import *  # noqa: E402,F401,F403
