"""What every test shares: real databases built by the real revisions, the revision chain, a CLI runner.

PostgreSQL tests use the server named by ``TEST_POSTGRES_URL`` (default: the local server with
trust auth). Each test that needs a database gets a new one, empty or a copy of one at head
(``PostgresDatabases``), and it is dropped after. Without a reachable server those tests are skipped, unless
``REQUIRE_POSTGRES=1`` (as in CI), where they fail.
"""
from __future__ import annotations

import contextlib
import fcntl
import io
import os
import runpy
import shutil
import signal
import subprocess
import sys
import time
import uuid
from concurrent.futures import Future, ThreadPoolExecutor
from pathlib import Path
from typing import Callable, Iterator
from unittest import mock

import django
import pytest
import sqlalchemy as sa
from django.core.exceptions import ImproperlyConfigured
from django.core.management import CommandError, call_command
from django.db import connections
from django.db.utils import load_backend
from django.test import override_settings

from schema_engine import commands, config, database, errors, scratch, state, versioning

ROOT = Path(__file__).resolve().parents[1]
# pytest-xdist's workers (./scripts/test runs two) start with SIGINT ignored, and their children would
# inherit that: give the commands that tests interrupt (Ctrl-C is SIGINT) the default back.
if signal.getsignal(signal.SIGINT) == signal.SIG_IGN:
    signal.signal(signal.SIGINT, signal.default_int_handler)
POSTGRES_ADMIN_URL = os.environ.get("TEST_POSTGRES_URL", "postgresql+psycopg://postgres@127.0.0.1:5432/postgres")
BACKENDS = ["postgresql", "sqlite"]


def _revision_chain() -> list[str]:
    """The revision ids, oldest first, as Alembic's ScriptDirectory walks them."""
    django.setup()  # the script location is a setting
    return [rev.revision for rev in reversed(list(state.script_directory().walk_revisions("base", "heads")))]


REVISIONS = _revision_chain()
HEAD = REVISIONS[-1]


def previous(revision: str) -> str:
    """Return the revision before ``revision`` in the chain, or ``base``."""
    index = REVISIONS.index(revision)
    return REVISIONS[index - 1] if index else "base"


@pytest.fixture(scope="session")
def postgres_admin() -> Iterator[sa.Engine]:
    """An autocommit engine on the PostgreSQL server's maintenance database."""
    engine = scratch.admin_engine(POSTGRES_ADMIN_URL)
    try:
        with engine.connect():
            pass
    except sa.exc.OperationalError as exc:
        message = f"PostgreSQL not reachable at {database.display_url(engine.url)}: {errors.first_line(exc)}"
        if os.environ.get("REQUIRE_POSTGRES") == "1":
            pytest.fail(message)
        pytest.skip(message)
    yield engine
    engine.dispose()


@contextlib.contextmanager
def default_database(url: sa.URL) -> Iterator[None]:
    """Point Django's ``default`` connection at ``url`` (a wrapper of its backend) while inside."""
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


class SharedLock:
    """A lock the test processes share (pytest-xdist's workers), through a file: held shared or exclusive."""

    def __init__(self, path: Path) -> None:
        self.path = path

    @contextlib.contextmanager
    def held(self, *, exclusive: bool) -> Iterator[None]:
        with open(self.path, "a") as lock:
            fcntl.flock(lock, fcntl.LOCK_EX if exclusive else fcntl.LOCK_SH)
            try:
                yield
            finally:
                fcntl.flock(lock, fcntl.LOCK_UN)


def shared_lock(tmp_path_factory: pytest.TempPathFactory, name: str) -> SharedLock:
    """The lock called ``name`` of this test run: the parent of a process's temporary folder is the one
    pytest-xdist's workers share."""
    return SharedLock(tmp_path_factory.getbasetemp().parent / f"reautomation-{name}.lock")


def real_chain() -> contextlib.AbstractContextManager[None]:
    """The project's own revisions, whatever revisions a test added (``scratch_migrations``): what "head" means here."""
    return override_settings(ALEMBIC_SCRIPT_LOCATION=str(ROOT / "migrations_alembic"))


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    """Spread the topology's tests evenly through the run (a stable order, the same in every worker).

    They take turns (``_one_at_a_time`` in ``tests/topology/conftest.py``): collected last, both of
    pytest-xdist's workers would end the run on them, one waiting for the other; spread out, the
    other worker runs the rest meanwhile.
    """
    topology = [item for item in items if item.path.parent.name == "topology"]
    if not topology:
        return
    others = [item for item in items if item.path.parent.name != "topology"]
    every = max(1, len(others) // len(topology))
    spread: list[pytest.Item] = []
    for index, item in enumerate(others):
        if index % every == 0 and topology:
            spread.append(topology.pop(0))
        spread.append(item)
    items[:] = spread + topology


class PostgresDatabases:
    """The tests' PostgreSQL databases, each made one ahead and dropped behind on a thread while tests run.

    On this server CREATE DATABASE (a copy through the WAL) and DROP DATABASE (it waits for a
    checkpoint) take about a second each: per test, they would cost more than most tests.
    ``template`` names a database to copy; ``head()`` is one that the real revisions upgraded to head
    once a session, so that each test at head gets a copy of it instead of running every revision.
    """

    def __init__(self, admin: sa.Engine, activity: SharedLock) -> None:
        self.admin = admin
        self.activity = activity
        self.worker = ThreadPoolExecutor(max_workers=2, thread_name_prefix="test-databases")
        self.spares: dict[str | None, Future[sa.URL]] = {}
        self.drops: list[Future[None]] = []
        self.head_template: sa.URL | None = None

    def _create(self, template: str | None) -> Future[sa.URL]:
        return self.worker.submit(self._shared, scratch.create_database, self.admin,
                                  scratch.unique_name("test_reautomation"), template=template)

    def _shared(self, work: Callable[..., sa.URL | None], *args: object, **kwargs: object) -> sa.URL | None:
        with self.activity.held(exclusive=False):
            return work(*args, **kwargs)

    def take(self, template: str | None = None) -> sa.URL:
        """A new database (empty, or a copy of ``template``, which nothing may be connected to)."""
        url = (self.spares.pop(template, None) or self._create(template)).result()
        self.spares[template] = self._create(template)
        return url

    def head(self) -> sa.URL:
        if self.head_template is None:
            self.head_template = self.take()
            with real_chain():  # whichever test asks first, maybe with revisions of its own (scratch_migrations)
                commands.upgrade(revision="head", url=self.head_template)
        return self.head_template

    def settle(self) -> None:
        """Wait until no database is being made or dropped."""
        for pending in [*self.spares.values(), *self.drops]:
            pending.exception()

    def drop(self, url: sa.URL) -> None:
        self.drops.append(self.worker.submit(self._shared, scratch.drop_database, self.admin, url))

    def close(self) -> None:
        for spare in self.spares.values():
            self.drop(spare.result())
        if self.head_template is not None:
            self.drop(self.head_template)
        self.worker.shutdown(wait=True)
        for dropped in self.drops:
            dropped.result()


@pytest.fixture(scope="session")
def server_activity(tmp_path_factory: pytest.TempPathFactory) -> SharedLock:
    """Each test, and each database made or dropped, holds it shared; a test needing the server quiet exclusive."""
    return shared_lock(tmp_path_factory, "server-activity")


@pytest.fixture(scope="session")
def postgres_databases(postgres_admin: sa.Engine, server_activity: SharedLock) -> Iterator[PostgresDatabases]:
    databases = PostgresDatabases(postgres_admin, server_activity)
    yield databases
    databases.close()


@pytest.fixture(autouse=True)
def _sharing_the_server(request: pytest.FixtureRequest, server_activity: SharedLock) -> Iterator[None]:
    """Every test holds the server shared, so that one needing it quiet (``quiet_server``) runs alone."""
    if "quiet_server" in request.fixturenames:
        yield
        return
    with server_activity.held(exclusive=False):
        yield


@pytest.fixture
def quiet_server(postgres_databases: PostgresDatabases, server_activity: SharedLock) -> Iterator[None]:
    """No other test running and no database being made or dropped, by any test process, while the test
    runs (request it after its databases).

    A test that provokes the server's own work (a VACUUM, its progress rows) sees only its own; the
    suite's other transactions, a CREATE DATABASE among them, hold back the horizon a VACUUM (FREEZE)
    freezes up to (what the VACUUM test still waits out: other users of this server hold it back too).
    """
    postgres_databases.settle()  # first: this process's own pending work takes the lock shared
    with server_activity.held(exclusive=True):
        yield


@pytest.fixture(scope="session")
def sqlite_head(tmp_path_factory: pytest.TempPathFactory) -> sa.URL:
    """A SQLite database that the real revisions upgraded to head, once a session; tests get copies of the file."""
    url = sa.URL.create("sqlite", database=str(tmp_path_factory.mktemp("head") / "head.sqlite3"))
    with real_chain():
        commands.upgrade(revision="head", url=url)
    return url


@pytest.fixture
def make_database(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Callable[..., sa.URL]]:
    """Return a factory: ``make_database(backend)`` creates an empty database and returns its URL.

    ``make_database(backend, at_head=True)``: a database at head, a copy of one the real revisions built.
    """
    created: list[sa.URL] = []

    def make(backend: str, *, at_head: bool = False) -> sa.URL:
        if backend == "sqlite":
            url = sa.URL.create("sqlite", database=str(tmp_path / f"{uuid.uuid4().hex}.sqlite3"))
            if at_head:
                shutil.copyfile(request.getfixturevalue("sqlite_head").database, url.database)
            return url
        databases = request.getfixturevalue("postgres_databases")
        url = databases.take(databases.head().database if at_head else None)
        created.append(url)
        return url

    yield make
    for url in created:
        request.getfixturevalue("postgres_databases").drop(url)


@pytest.fixture(params=BACKENDS)
def backend(request: pytest.FixtureRequest) -> str:
    """Each backend the schema runs on."""
    return request.param


@pytest.fixture
def empty_db(make_database: Callable[..., sa.URL], backend: str) -> sa.URL:
    """A new, empty database on ``backend``."""
    return make_database(backend)


@pytest.fixture
def head_db(make_database: Callable[..., sa.URL], backend: str) -> sa.URL:
    """A new database on ``backend`` at head (a copy of one the real revisions built: ``make_database``)."""
    return make_database(backend, at_head=True)


@pytest.fixture
def pg_db(make_database: Callable[..., sa.URL]) -> sa.URL:
    """A new, empty PostgreSQL database."""
    return make_database("postgresql")


@pytest.fixture
def pg_head_db(make_database: Callable[..., sa.URL]) -> sa.URL:
    """A new PostgreSQL database at head (as ``head_db``)."""
    return make_database("postgresql", at_head=True)


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
    with scratch.scratch_database(postgres_admin, "test_reautomation_django") as url:
        commands.upgrade(revision="head", url=url)
        with default_database(url):
            yield


def django_url(url: sa.URL | str) -> str:
    """Return ``url`` as a DATABASE_URL that Django's settings accept."""
    if isinstance(url, str):
        return url
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


# --- commands as an operator runs them: their own process, from the repository root ---------------

def cli_environment(database_url: sa.URL | str, **env: str) -> dict[str, str]:
    """The environment of a command run by an operator against ``database_url``."""
    return {**os.environ, "DATABASE_URL": django_url(database_url), "SECRET_KEY": "cli-test",
            "DJANGO_SETTINGS_MODULE": "reautomation.settings", **env}


def run_cli(*args: str, database_url: sa.URL | str, **env: str) -> subprocess.CompletedProcess[str]:
    """Run a command-line tool from the repository root, as an operator would."""
    return subprocess.run(args, cwd=ROOT, env=cli_environment(database_url, **env), capture_output=True, text=True,
                          timeout=600)


def manage(database_url: sa.URL | str, *args: str, **env: str) -> subprocess.CompletedProcess[str]:
    """Run ``manage.py ARGS`` against ``database_url``."""
    return run_cli(sys.executable, "manage.py", *args, database_url=database_url, **env)


def call(database_url: sa.URL | str, *args: str, **env: str) -> subprocess.CompletedProcess[str]:
    """Run ``manage.py ARGS`` in this process, for tests where nothing about a process is under test.

    It returns what ``manage`` would: the output, and a CommandError as Django's ``run_from_argv``
    turns it into one line on stderr and its exit code (a configuration error as manage.py does).
    ``env`` names settings, parsed from these values as reautomation/settings.py parses its environment.
    """
    out, err = io.StringIO(), io.StringIO()
    returncode = 0
    try:
        with default_database(sa.make_url(django_url(database_url))), override_settings(**_settings_from(env)):
            call_command(*args, stdout=out, stderr=err)
    except CommandError as exc:
        err.write(f"CommandError: {exc}\n")
        returncode = exc.returncode
    except ImproperlyConfigured as exc:
        err.write(f"manage.py: configuration error: {exc}\n")
        returncode = 2
    return subprocess.CompletedProcess(["manage.py", *args], returncode, out.getvalue(), err.getvalue())


def _settings_from(env: dict[str, str]) -> dict[str, object]:
    """The settings that ``env`` sets, read by reautomation/settings.py itself (each name must be a setting)."""
    if not env:
        return {}
    with mock.patch.dict(os.environ, env):
        fresh = runpy.run_path(str(ROOT / "reautomation" / "settings.py"))
    return {name: fresh[name] for name in env}


def start_manage(database_url: sa.URL | str, *args: str, **env: str) -> subprocess.Popen[str]:
    """Start ``manage.py ARGS`` against ``database_url``; the caller waits for it."""
    return subprocess.Popen([sys.executable, "manage.py", *args], cwd=ROOT, env=cli_environment(database_url, **env),
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def alembic_cli(database_url: sa.URL | str, *args: str, **env: str) -> subprocess.CompletedProcess[str]:
    """Run the plain ``alembic`` CLI, as the guide's users type it."""
    return run_cli(str(Path(sys.executable).parent / "alembic"), *args, database_url=database_url, **env)


def scratch_alembic_cli(migrations: Path, database_url: sa.URL | str, *args: str) -> subprocess.CompletedProcess[str]:
    """Run the plain ``alembic`` CLI on a copy of the revisions (``scratch_migrations``): its own alembic.ini."""
    ini = migrations.parent / "alembic.ini"
    ini.write_text((ROOT / "alembic.ini").read_text().replace("%(here)s/migrations_alembic", str(migrations)))
    return alembic_cli(database_url, "-c", str(ini), *args, ALEMBIC_SCRIPT_LOCATION=str(migrations))


def error_lines(stderr: str) -> list[str]:
    """Return what a command wrote to stderr, less the line naming the database (there with --sql and --json)."""
    return [line for line in stderr.strip().splitlines() if not line.startswith("Database: ")]


# --- schemas to compare, and a copy of the revisions that tests may add to -------------------------

def snapshot(url: sa.URL) -> dict[str, dict[str, object]]:
    """Return every table's columns (name, type, nullability), indexes and unique constraints.

    Archive tables are data a downgrade kept (``archives`` lists them), not schema; the engine's own tables
    (checksums, the expands' bookkeeping) neither.
    """
    engine = sa.create_engine(url, poolclass=sa.pool.NullPool)
    try:
        inspector = sa.inspect(engine)
        result = {}
        for table in sorted(inspector.get_table_names()):
            if (table in ("alembic_version", config.CHECKSUM_TABLE, versioning.VERSIONS_TABLE)
                    or table.startswith(config.ARCHIVE_TABLE_PREFIX)):
                continue
            result[table] = {
                "columns": sorted((c["name"], str(c["type"]), c["nullable"]) for c in inspector.get_columns(table)),
                "indexes": sorted(i["name"] for i in inspector.get_indexes(table)),
                "uniques": sorted(u["name"] or "" for u in inspector.get_unique_constraints(table)),
            }
        return result
    finally:
        engine.dispose()


@contextlib.contextmanager
def inspected(url: sa.URL) -> Iterator[sa.Inspector]:
    """Yield an inspector of the database at ``url``, on an engine disposed after."""
    engine = sa.create_engine(url, poolclass=sa.pool.NullPool)
    try:
        yield sa.inspect(engine)
    finally:
        engine.dispose()


def archives(url: sa.URL) -> set[str]:
    """Return the archive tables in the database: rows and values that downgrades kept."""
    with inspected(url) as inspector:
        return {t for t in inspector.get_table_names() if t.startswith(config.ARCHIVE_TABLE_PREFIX)}


@pytest.fixture
def scratch_migrations(tmp_path: Path, settings: object) -> Iterator[Path]:
    """A copy of migrations_alembic that tests may add revisions to; the settings point at it."""
    target = tmp_path / "migrations_copy"
    shutil.copytree(ROOT / "migrations_alembic", target, ignore=shutil.ignore_patterns("__pycache__"))
    settings.ALEMBIC_SCRIPT_LOCATION = str(target)
    yield target
