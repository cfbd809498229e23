"""Settings for the test suite: the project's settings, a test-only secret, PostgreSQL by default.

Tests make their own databases; Django's ``default`` connection is pointed at one of them by
``django_db_setup`` (tests/conftest.py), so it must be a PostgreSQL connection to begin with.
Without ``DATABASE_URL`` it names a database that is never created: whatever connects without
a test's own database fails loudly, instead of migrating the server's ``postgres`` database.
"""
import os

import sqlalchemy as sa

os.environ.setdefault("SECRET_KEY", "test-only-secret-key-not-for-production")
# The test client speaks plain HTTP, and pages render without running collectstatic first.
os.environ.setdefault("SECURE_SSL_REDIRECT", "false")
os.environ.setdefault("STATICFILES_BACKEND", "django.contrib.staticfiles.storage.StaticFilesStorage")
NO_DATABASE = "reautomation_tests_use_their_own_database"  # never created (tests/conftest.py makes each one)
DEFAULT_DATABASE_URL = sa.make_url(
    os.environ.get("TEST_POSTGRES_URL", "postgresql://postgres@127.0.0.1:5432/postgres").replace("+psycopg", ""),
).set(database=NO_DATABASE).render_as_string(hide_password=False)
os.environ.setdefault("DATABASE_URL", DEFAULT_DATABASE_URL)

from reautomation.settings import *  # noqa: E402,F401,F403

# Nothing is collected for in-process tests: WhiteNoise has no directory to serve (the browser
# test runs collectstatic and a real server with the production settings).
STATIC_ROOT = None
