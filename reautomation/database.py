"""The one place that turns configuration into database connections.

Django's settings, the Alembic environment (``migrate_schema`` and the plain ``alembic`` CLI),
the tests and the benchmark scripts all get their database from here.
"""
from __future__ import annotations

import re
import warnings
from pathlib import Path
from typing import Any, Mapping

import environ
import sqlalchemy as sa
from django.core.exceptions import ImproperlyConfigured

# Django backend -> SQLAlchemy dialect+driver: the two databases this project runs on.
SQLALCHEMY_DRIVERS = {
    "django.db.backends.postgresql": "postgresql+psycopg",
    "django.db.backends.sqlite3": "sqlite",
}

_PASSWORD_IN_URL = re.compile(r"(?P<head>[a-z0-9+.-]+://[^:/@\s]*:)(?P<password>[^@\s]*)(?P<tail>@)", re.I)


class InvalidDatabaseURL(ImproperlyConfigured):
    """DATABASE_URL cannot be used: malformed, or not a PostgreSQL/SQLite URL."""


def redact_url(url: str) -> str:
    """Return ``url`` with any password replaced by ``***``."""
    return _PASSWORD_IN_URL.sub(r"\g<head>***\g<tail>", url)


def database_config(url: str | None, *, sqlite_path: Path) -> dict[str, Any]:
    """Return Django's ``DATABASES['default']`` for ``url``, or the embedded SQLite file if unset."""
    if not url:
        return {"ENGINE": "django.db.backends.sqlite3", "NAME": str(sqlite_path)}
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # environ warns on unknown schemes; we raise below
            config = environ.Env.db_url_config(url)
    except ValueError as exc:
        raise InvalidDatabaseURL(f"DATABASE_URL {redact_url(url)!r} is malformed ({exc})") from exc
    if config.get("ENGINE") not in SQLALCHEMY_DRIVERS:
        raise InvalidDatabaseURL(
            f"DATABASE_URL {redact_url(url)!r} is not a postgresql:// or sqlite:/// URL"
        )
    if not config.get("NAME"):
        raise InvalidDatabaseURL(f"DATABASE_URL {redact_url(url)!r} names no database")
    return config


def sqlalchemy_url(settings_dict: Mapping[str, Any] | None = None) -> sa.URL:
    """Return the SQLAlchemy URL of a Django database (default: the live ``default`` connection)."""
    if settings_dict is None:
        from django.db import connections

        settings_dict = connections["default"].settings_dict
    driver = SQLALCHEMY_DRIVERS.get(settings_dict["ENGINE"])
    if driver is None:
        raise InvalidDatabaseURL(f"database engine {settings_dict['ENGINE']!r} is not supported")
    if driver == "sqlite":
        return sa.URL.create("sqlite", database=str(settings_dict["NAME"]))
    options = {k: str(v) for k, v in (settings_dict.get("OPTIONS") or {}).items()}
    return sa.URL.create(
        driver,
        username=settings_dict.get("USER") or None,
        password=settings_dict.get("PASSWORD") or None,
        host=settings_dict.get("HOST") or None,
        port=int(settings_dict["PORT"]) if settings_dict.get("PORT") else None,
        database=settings_dict["NAME"],
        query=options,
    )


def display_url(url: sa.URL) -> str:
    """Return ``url`` as text that is safe to print (no password)."""
    return url.render_as_string(hide_password=True)


def create_engine(url: sa.URL | str, **options: Any) -> sa.Engine:
    """Return an engine for ``url``; on SQLite, one whose transactions include DDL.

    Python's sqlite3 driver only opens a transaction before DML, so a failed revision would leave
    its DDL half done; SQLAlchemy's documented recipe hands BEGIN to SQLAlchemy instead.
    SQLite transactions take the write lock when they begin (see ``_begin``).
    """
    options.setdefault("poolclass", sa.pool.NullPool)
    if sa.make_url(url).get_backend_name() == "sqlite":
        options.setdefault("connect_args", {"timeout": 30})  # wait for another writer, not fail at once
    engine = sa.create_engine(url, **options)
    if engine.dialect.name == "sqlite":

        @sa.event.listens_for(engine, "connect")
        def _driver_autocommit(dbapi_connection: Any, record: Any) -> None:
            dbapi_connection.isolation_level = None

        @sa.event.listens_for(engine, "begin")
        def _begin(connection: sa.Connection) -> None:
            # IMMEDIATE: take the write lock up front. SQLite has no row locks (FOR UPDATE is
            # ignored), so this is what keeps two workers from reading the same batch.
            connection.exec_driver_sql("BEGIN IMMEDIATE")

    return engine
