"""The one place that turns configuration into database connections, and the one that hides passwords.

Django's settings, the Alembic environment (``migrate_schema`` and the plain ``alembic`` CLI),
the apps, the tests and the benchmark scripts all get their database from here.
"""
from __future__ import annotations

import contextlib
import os
import re
import warnings
from pathlib import Path
from typing import Any, Iterator, Mapping

import environ
import psycopg
import sqlalchemy as sa
from django.conf import settings
from django.db import connections

from schema_engine.errors import DatabaseUnreachable, InvalidDatabaseURL, SessionRequired, first_line

# Django backend -> SQLAlchemy dialect+driver: the two databases this project runs on.
SQLALCHEMY_DRIVERS = {
    "django.db.backends.postgresql": "postgresql+psycopg",
    "django.db.backends.sqlite3": "sqlite",
}

# A URL's password runs from the user's colon to the last "@" of the URL: an unencoded "@" in
# the password must not leave its tail on show.
_PASSWORD_IN_URL = re.compile(r"(?P<head>[a-z0-9+.-]+://[^:/@\s]*:)(?P<password>\S*)(?P<tail>@)", re.I)
_PASSWORD_PARAMETER = re.compile(r"(?P<head>[?&]password=)(?P<password>[^&\s'\"]*)", re.I)
MASK = "***"
PSYCOPG_ONLY_OPTIONS = frozenset({"prepare_threshold", "server_side_binding", "isolation_level", "assume_role", "pool"})
# Two connections used in turn, this many statements each: through a pooler that gives a server
# connection per transaction, both are handed the same backend (PgBouncer reuses the last freed).
SESSION_PROBES = 3
_proven_sessions: set[str] = set()  # URLs (with password: never shown) whose connections are sessions
# In a pooled connection's ``info``: the settings ``set_session`` made, reset as it is given back.
_SESSION_SETTINGS = "schema_engine.session_settings"


def redact(text: str, *secrets: str | None) -> str:
    """Return ``text`` with every URL password (in the authority or as ``?password=``)
    and each of ``secrets`` masked."""
    for secret in secrets:
        if secret:
            text = text.replace(str(secret), MASK)
    text = _PASSWORD_IN_URL.sub(rf"\g<head>{MASK}\g<tail>", text)
    return _PASSWORD_PARAMETER.sub(rf"\g<head>{MASK}", text)


def database_config(url: str | None, *, sqlite_path: Path, embedded_allowed: bool = True,
                    setting: str = "DATABASE_URL") -> dict[str, Any]:
    """Return Django's ``DATABASES['default']`` for ``url``; if unset, the embedded SQLite file (when allowed)."""
    if not url:
        if not embedded_allowed:
            raise InvalidDatabaseURL(
                "DATABASE_URL is not set: export DATABASE_URL=postgresql://USER:PASSWORD@HOST:5432/NAME (or put it "
                "in .env); the embedded SQLite file is only for DEBUG=true or an explicit DATABASE_URL=sqlite:///PATH")
        return {"ENGINE": "django.db.backends.sqlite3", "NAME": str(sqlite_path)}
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # environ warns on unknown schemes; we raise below
            config = environ.Env.db_url_config(url)
    except ValueError as exc:
        raise InvalidDatabaseURL(f"{setting} {redact(url)!r} is malformed ({exc})") from exc
    if config.get("ENGINE") not in SQLALCHEMY_DRIVERS:
        raise InvalidDatabaseURL(
            f"{setting} {redact(url)!r} is not a postgresql:// or sqlite:/// URL"
        )
    if not config.get("NAME"):
        raise InvalidDatabaseURL(f"{setting} {redact(url)!r} names no database")
    options = config.get("OPTIONS") or {}
    if "password" in options:
        # ?password=... is the password: keep it where every printer of URLs knows to hide it.
        config["PASSWORD"] = options.pop("password")
    return config


def sqlalchemy_url(settings_dict: Mapping[str, Any] | None = None) -> sa.URL:
    """Return the SQLAlchemy URL of a Django database (default: the live ``default`` connection)."""
    if settings_dict is None:
        settings_dict = connections["default"].settings_dict
    driver = SQLALCHEMY_DRIVERS.get(settings_dict["ENGINE"])
    if driver is None:
        raise InvalidDatabaseURL(f"database engine {settings_dict['ENGINE']!r} is not supported")
    if driver == "sqlite":
        return sa.URL.create("sqlite", database=str(settings_dict["NAME"]))
    # libpq's parameters only: psycopg's own (prepare_threshold, set for PgBouncer) are Django's business.
    options = {k: str(v) for k, v in (settings_dict.get("OPTIONS") or {}).items() if k not in PSYCOPG_ONLY_OPTIONS}
    return sa.URL.create(
        driver,
        username=settings_dict.get("USER") or None,
        password=settings_dict.get("PASSWORD") or None,
        host=settings_dict.get("HOST") or None,
        port=int(settings_dict["PORT"]) if settings_dict.get("PORT") else None,
        database=settings_dict["NAME"],
        query=options,
    )


def resolve_url(url: sa.URL | str | None = None) -> sa.URL:
    """Return ``url`` as a URL, or, when none is given, the engine's own: ``session_url()``."""
    return sa.make_url(url) if url is not None else session_url()


def session_url() -> sa.URL:
    """Return the database the engine's work uses: a session of its own (advisory lock, SET timeouts).

    ``MIGRATION_DATABASE_URL`` (the primary itself) when set; else Django's ``default`` database,
    unless that goes through a transaction-pooling PgBouncer, where a session's lock and
    settings would not hold: refused in one line naming the setting.
    """
    if settings.MIGRATION_DATABASE:
        return sqlalchemy_url(settings.MIGRATION_DATABASE)
    if settings.DATABASE_POOL_MODE == "transaction":
        raise SessionRequired(
            "DATABASE_URL goes through a transaction-pooling PgBouncer (DATABASE_POOL_MODE=transaction), where a "
            "migration's lock and timeouts and a backfill's coordination do not hold: set MIGRATION_DATABASE_URL "
            "to the primary itself")
    return sqlalchemy_url()


def require_session(url: sa.URL | str) -> None:
    """Raise ``SessionRequired`` unless each connection to ``url`` is a server session of its own.

    A transaction or statement pooler (PgBouncer) hands each transaction whichever server
    connection is free, whatever ``DATABASE_POOL_MODE`` says: two connections used in turn are
    then handed the same backend, or one connection another backend from one statement to the
    next. An advisory lock or a session setting taken there stays on a server connection that the
    application gets next. Proven once per URL per process; PostgreSQL only.
    """
    url = sa.make_url(url)
    key = url.render_as_string(hide_password=False)
    if url.get_backend_name() != "postgresql" or key in _proven_sessions:
        return
    # Autocommit: a transaction would keep its server connection, and hide the pooler.
    engine = create_engine(url, isolation_level="AUTOCOMMIT", connect_args={"prepare_threshold": None})
    pids: tuple[set[int], set[int]] = (set(), set())
    try:
        with engine.connect() as first, engine.connect() as second:
            for _ in range(SESSION_PROBES):
                for seen, conn in zip(pids, (first, second)):
                    seen.add(conn.exec_driver_sql("SELECT pg_backend_pid()").scalar_one())
    except sa.exc.DBAPIError as exc:
        raise DatabaseUnreachable(unreachable_message(url, exc)) from exc
    finally:
        engine.dispose()
    if len(pids[0]) > 1 or len(pids[1]) > 1 or pids[0] & pids[1]:
        raise SessionRequired(
            f"{display_url(url)} hands one server session to several connections: it goes through a transaction "
            "pooler (PgBouncer), whatever DATABASE_POOL_MODE says, where a migration's lock and timeouts and a "
            "backfill's coordination do not hold: set MIGRATION_DATABASE_URL to the primary itself")
    _proven_sessions.add(key)


def set_session(connection: sa.Connection, values: Mapping[str, str]) -> None:
    """Set PostgreSQL settings for ``connection``'s session (not committed), reset as it is given back.

    A setting left on a connection returned to a pool, or on a pooler's server connection, would
    pass to whoever is handed it next (a migration's timeouts, a backfill's ``synchronous_commit``).
    Refused where connections are not sessions (``require_session``).
    """
    require_session(connection.engine.url)
    made = connection.connection.info.setdefault(_SESSION_SETTINGS, set())
    for name, value in values.items():
        connection.execute(sa.text("SELECT set_config(:name, :value, false)"), {"name": name, "value": value})
        made.add(name)
    if not sa.event.contains(connection.engine.pool, "reset", _reset_session):
        sa.event.listen(connection.engine.pool, "reset", _reset_session)


def _reset_session(dbapi_connection: Any, record: Any, reset_state: Any) -> None:
    """Put back what ``set_session`` set (a NULL value is the session's own default), as the pool takes it back.

    An error here makes the pool discard the connection, and its session with it.
    """
    made = record.info.pop(_SESSION_SETTINGS, None) if record is not None else None
    if not made:
        return
    dbapi_connection.rollback()  # an aborted transaction would refuse the reset; the pool rolls back anyway
    cursor = dbapi_connection.cursor()
    try:
        for name in sorted(made):
            cursor.execute("SELECT set_config(%s, NULL, false)", (name,))
    finally:
        cursor.close()
    dbapi_connection.commit()


def display_url(url: sa.URL) -> str:
    """Return ``url`` as text that is safe to print (no password)."""
    return redact(url.render_as_string(hide_password=True))


def libpq_connection(url: sa.URL) -> tuple[str, dict[str, str]]:
    """Return ``url`` as a libpq URL without any password, and the environment that carries the password.

    For PostgreSQL's client tools: a command line is visible to every user of the host (``ps``),
    so the password reaches libpq only through ``PGPASSWORD``.
    """
    query = {key: value for key, value in url.query.items() if key.lower() != "password"}
    password = url.password or next((v for k, v in url.query.items() if k.lower() == "password"), None)
    bare = sa.URL.create("postgresql", username=url.username, host=url.host, port=url.port, database=url.database,
                         query=query)
    env = {key: value for key, value in os.environ.items() if key != "PGPASSWORD"}
    if password:
        env["PGPASSWORD"] = str(password if isinstance(password, str) else password[0])
    return bare.render_as_string(hide_password=False), env


def _private_sqlite_file(path: str | None) -> None:
    """Create a new SQLite database file readable by its owner only: it will hold contacts and conversations."""
    if not path or path == ":memory:" or path.startswith("file:"):
        return
    try:
        os.close(os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600))
    except FileExistsError:
        pass
    except OSError:
        pass  # e.g. a missing folder: SQLite itself reports it, in its own words, on connecting


def create_engine(url: sa.URL | str, **options: Any) -> sa.Engine:
    """Return an engine for ``url``; on SQLite, one whose transactions include DDL.

    Python's sqlite3 driver only opens a transaction before DML, so a failed revision would leave
    its DDL half done; SQLAlchemy's documented recipe hands BEGIN to SQLAlchemy instead.
    SQLite transactions take the write lock when they begin (see ``_begin``).
    """
    options.setdefault("poolclass", sa.pool.NullPool)
    if sa.make_url(url).get_backend_name() == "sqlite":
        options.setdefault("connect_args", {"timeout": 30})  # wait for another writer, not fail at once
        _private_sqlite_file(sa.make_url(url).database)
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


def unreachable_message(url: sa.URL, exc: BaseException) -> str:
    """Return the one line that says a database could not be reached (never its password)."""
    return f"cannot connect to the database {display_url(url)}: {redact(first_line(exc), url.password)}"


@contextlib.contextmanager
def psycopg_connection(url: sa.URL, **options: Any) -> Iterator[psycopg.Connection]:
    """Yield a psycopg connection to ``url`` (autocommit unless ``options`` say otherwise), closed after.

    For what SQLAlchemy does not offer: COPY streamed between servers, a snapshot exported.
    """
    try:
        conn = psycopg.connect(url.set(drivername="postgresql").render_as_string(hide_password=False),
                               **{"autocommit": True, "connect_timeout": 10, **options})
    except psycopg.Error as exc:
        raise DatabaseUnreachable(unreachable_message(url, exc)) from exc
    with conn:
        yield conn


@contextlib.contextmanager
def connect(url: sa.URL | str | None = None) -> Iterator[sa.Connection]:
    """Yield a connection to ``url`` (default: the engine's own session, ``session_url()``); commit what is left open.

    The engine's own is proven a session first (``require_session``): through a transaction pooler
    its many statements would meet each other's prepared statements before its lock could refuse.
    """
    if url is None:
        url = session_url()
        require_session(url)
    url = resolve_url(url)
    engine = create_engine(url)
    try:
        try:
            connection = engine.connect()
        except sa.exc.DBAPIError as exc:
            raise DatabaseUnreachable(unreachable_message(url, exc)) from exc
        with connection:
            yield connection
            transaction = connection.get_transaction()
            if transaction is not None and transaction.is_valid:  # a failed one is rolled back on close
                connection.commit()
    finally:
        engine.dispose()
