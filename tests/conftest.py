"""Shared fixtures: real databases, built by running the real revisions.

PostgreSQL tests use the server named by ``TEST_POSTGRES_URL`` (default: the local server with
trust auth). Each test that needs a database gets a new, empty one and it is dropped after.
Without a reachable server those tests are skipped, unless ``REQUIRE_POSTGRES=1`` (as in CI),
where they fail.
"""
from __future__ import annotations

import contextlib
import os
import time
import uuid
from pathlib import Path
from typing import Callable, Iterator

import pytest
import sqlalchemy as sa
from django.db import connections

from reautomation import database, schema

POSTGRES_ADMIN_URL = os.environ.get("TEST_POSTGRES_URL", "postgresql+psycopg://postgres@127.0.0.1:5432/postgres")
BACKENDS = ["postgresql", "sqlite"]


@pytest.fixture(scope="session")
def postgres_admin() -> Iterator[sa.Engine]:
    """An autocommit engine on the PostgreSQL server's maintenance database."""
    engine = sa.create_engine(POSTGRES_ADMIN_URL, isolation_level="AUTOCOMMIT", poolclass=sa.pool.NullPool)
    try:
        with engine.connect():
            pass
    except sa.exc.OperationalError as exc:
        message = f"PostgreSQL not reachable at {database.display_url(engine.url)}: {str(exc.orig).splitlines()[0]}"
        if os.environ.get("REQUIRE_POSTGRES") == "1":
            pytest.fail(message)
        pytest.skip(message)
    yield engine
    engine.dispose()


def create_database(admin: sa.Engine, prefix: str = "test_reautomation") -> sa.URL:
    """Create an empty PostgreSQL database on ``admin``'s server; return its URL."""
    name = f"{prefix}_{uuid.uuid4().hex[:12]}"
    with admin.connect() as conn:
        conn.execute(sa.text(f'CREATE DATABASE "{name}"'))
    return admin.url.set(database=name)


def drop_database(admin: sa.Engine, url: sa.URL) -> None:
    """Drop the database at ``url``, closing whatever is still connected to it."""
    with admin.connect() as conn:
        conn.execute(sa.text(f'DROP DATABASE IF EXISTS "{url.database}" WITH (FORCE)'))


@contextlib.contextmanager
def default_database(url: sa.URL) -> Iterator[None]:
    """Point Django's ``default`` connection at ``url`` (a wrapper of its backend) while inside."""
    from django.db.utils import load_backend

    original = connections["default"]
    original.close()
    settings_dict = dict(original.settings_dict)
    settings_dict.update(database.database_config(django_url(url), sqlite_path=Path("unused")))
    connections["default"] = load_backend(settings_dict["ENGINE"]).DatabaseWrapper(settings_dict)
    try:
        yield
    finally:
        connections["default"].close()
        connections["default"] = original


@pytest.fixture
def make_database(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Callable[[str], sa.URL]]:
    """Return a factory: ``make_database(backend)`` creates an empty database and returns its URL."""
    created: list[tuple[str, sa.URL]] = []

    def make(backend: str) -> sa.URL:
        if backend == "sqlite":
            url = sa.URL.create("sqlite", database=str(tmp_path / f"{uuid.uuid4().hex}.sqlite3"))
        else:
            url = create_database(request.getfixturevalue("postgres_admin"))
        created.append((backend, url))
        return url

    yield make
    for backend, url in created:
        if backend == "postgresql":
            drop_database(request.getfixturevalue("postgres_admin"), url)


@pytest.fixture(params=BACKENDS)
def backend(request: pytest.FixtureRequest) -> str:
    """Each backend the schema runs on."""
    return request.param


@pytest.fixture
def empty_db(make_database: Callable[[str], sa.URL], backend: str) -> sa.URL:
    """A new, empty database on ``backend``."""
    return make_database(backend)


@pytest.fixture
def head_db(empty_db: sa.URL) -> sa.URL:
    """A new database on ``backend``, upgraded to head by the real revisions."""
    schema.upgrade(revision="head", url=empty_db)
    return empty_db


@pytest.fixture
def pg_head_db(make_database: Callable[[str], sa.URL]) -> sa.URL:
    """A new PostgreSQL database at head."""
    url = make_database("postgresql")
    schema.upgrade(revision="head", url=url)
    return url


@pytest.fixture
def django_database() -> Iterator[Callable[[sa.URL], None]]:
    """Return a function that points Django's ``default`` connection at a test database."""
    with contextlib.ExitStack() as stack:
        yield lambda url: stack.enter_context(default_database(url))


def run_sql(url: sa.URL, sql: str, params: dict | None = None) -> list[sa.Row]:
    """Run one statement on ``url`` in its own transaction; return its rows, if any."""
    engine = database.create_engine(url)
    try:
        with engine.begin() as conn:
            result = conn.execute(sa.text(sql), params or {})
            return list(result) if result.returns_rows else []
    finally:
        engine.dispose()


@pytest.fixture(scope="session")
def django_db_setup(django_db_blocker: object, postgres_admin: sa.Engine) -> Iterator[None]:
    """Build pytest-django's test database with the real revisions (never Django's syncdb), on PostgreSQL."""
    url = create_database(postgres_admin, "test_reautomation_django")
    schema.upgrade(revision="head", url=url)
    try:
        with default_database(url):
            yield
    finally:
        drop_database(postgres_admin, url)


def django_url(url: sa.URL) -> str:
    """Return ``url`` as a DATABASE_URL that Django's settings accept."""
    return url.render_as_string(hide_password=False).replace("+psycopg", "")


def wait_for(condition: Callable[[], object], timeout: float = 120) -> None:
    """Wait until ``condition()`` is true: for a state (a lock, a row, a line), never for a fixed time.

    ``timeout`` only bounds a test that would otherwise hang; it is generous because this machine
    is shared and slow at moments.
    """
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, f"timed out after {timeout:g} s waiting for {condition}"
        time.sleep(0.05)
