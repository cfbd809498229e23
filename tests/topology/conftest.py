"""The production topology that ``scripts/topology up`` starts: PgBouncer, a primary and its streaming replica.

``.ci/run`` brings it up, exports its URLs as ``TEST_TOPOLOGY_DATABASE_URL`` (through PgBouncer),
``TEST_TOPOLOGY_MIGRATION_DATABASE_URL`` (the primary) and ``TEST_TOPOLOGY_DATABASE_REPLICA_URL``
(the replica), and takes it down after. Without them these tests are skipped, unless
``REQUIRE_TOPOLOGY=1`` (as in CI), where they fail.
"""
from __future__ import annotations

import os
import shutil
import subprocess
import sys
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator

import psycopg
import pytest
import sqlalchemy as sa

from schema_engine import scratch
from schema_engine.forecast import leftovers
from tests.conftest import ROOT, cli_environment, django_url, shared_lock, wait_for


@dataclass(frozen=True)
class Topology:
    pooler: sa.URL  # DATABASE_URL: through PgBouncer, transaction pooling
    primary: sa.URL  # MIGRATION_DATABASE_URL: the primary, direct
    replica: sa.URL  # DATABASE_REPLICA_URL: the streaming replica

    def on(self, database: str) -> Topology:
        return Topology(*(url.set(database=database) for url in (self.pooler, self.primary, self.replica)))

    def environment(self) -> dict[str, str]:
        """The settings of an application host in this topology."""
        return {"DATABASE_URL": django_url(self.pooler), "MIGRATION_DATABASE_URL": django_url(self.primary),
                "DATABASE_REPLICA_URL": django_url(self.replica), "DATABASE_POOL_MODE": "transaction"}


def host_env(topology: Topology, **env: str) -> dict[str, str]:
    """The environment of a command on an application host of the topology."""
    return {**cli_environment(django_url(topology.pooler)), **topology.environment(), **env}


def manage(topology: Topology, *args: str, **env: str) -> subprocess.CompletedProcess[str]:
    """``manage.py ARGS`` on an application host of the topology."""
    return subprocess.run([sys.executable, "manage.py", *args], cwd=ROOT, capture_output=True, text=True,
                          env=host_env(topology, **env), timeout=600)


@pytest.fixture
def forecast_root() -> Iterator[Path]:
    """A scratch root of this test's own, which the ``postgres`` user may pass through (pytest's own is 0700)."""
    root = Path(tempfile.mkdtemp(prefix="forecast-test-", dir="/tmp"))
    root.chmod(0o711)
    yield root
    for folder in root.iterdir():  # a copy a failed test left running
        leftovers.remove(folder)
    shutil.rmtree(root)


@pytest.fixture(autouse=True)
def _one_at_a_time(tmp_path_factory: pytest.TempPathFactory) -> Iterator[None]:
    """One topology test at a time across the test processes: they share its replica, whose replay some pause."""
    with shared_lock(tmp_path_factory, "topology").held(exclusive=True):
        yield


@pytest.fixture(scope="session")
def topology() -> Topology:
    names = ("DATABASE_URL", "MIGRATION_DATABASE_URL", "DATABASE_REPLICA_URL")
    urls = [os.environ.get(f"TEST_TOPOLOGY_{name}") for name in names]
    if not all(urls):
        message = "the topology is not up: run 'scripts/topology up' and export its lines with a TEST_TOPOLOGY_ prefix"
        if os.environ.get("REQUIRE_TOPOLOGY") == "1":
            pytest.fail(message)
        pytest.skip(message)
    parsed = [sa.make_url(url).set(drivername="postgresql+psycopg") for url in urls]  # type: ignore[arg-type]
    for url in parsed:
        try:
            psycopg.connect(django_url(url), connect_timeout=10).close()
        except psycopg.Error as exc:
            pytest.fail(f"the topology does not answer at {url.render_as_string()}: {exc}")
    return Topology(*parsed)


@pytest.fixture
def topology_db(topology: Topology) -> Iterator[Topology]:
    """A new, empty database on the topology's primary (and so on its replica, through its WAL)."""
    admin = scratch.admin_engine(topology.primary.set(database="postgres"))
    url = scratch.create_database(admin, scratch.unique_name("test_topology"))
    try:
        yield topology.on(url.database)
    finally:
        scratch.drop_database(admin, url)
        admin.dispose()


def _answers(url: sa.URL) -> bool:
    try:
        psycopg.connect(django_url(url), connect_timeout=10).close()
    except psycopg.OperationalError:
        return False
    return True


class Replay:
    """The replica's replay: paused, it still receives WAL, and its lag grows until resumed."""

    def __init__(self, replica: psycopg.Connection) -> None:
        self.replica = replica

    def pause(self) -> None:
        self.replica.execute("SELECT pg_wal_replay_pause()")

    def resume(self) -> None:
        self.replica.execute("SELECT pg_wal_replay_resume()")


@pytest.fixture
def replay(topology: Topology) -> Iterator[Replay]:
    """Control of the replica's replay; resumed at the end whatever the test did."""
    with psycopg.connect(django_url(topology.replica.set(database="postgres")), autocommit=True) as replica:
        control = Replay(replica)
        try:
            yield control
        finally:
            control.resume()


@pytest.fixture
def unprivileged_db(topology: Topology) -> Iterator[Topology]:
    """A new database owned by a login role that is no superuser and not in ``pg_monitor``, as managed services give.

    Its URLs log in as that role; DATABASE_URL is the primary too (the topology's PgBouncer knows
    only ``postgres``). The role and the database reach the replica through the WAL.
    """
    admin = scratch.admin_engine(topology.primary.set(database="postgres"))
    role, name = scratch.unique_name("migrator"), scratch.unique_name("test_topology")
    quote = admin.dialect.identifier_preparer.quote
    with admin.connect() as conn:
        conn.execute(sa.text(f"CREATE ROLE {quote(role)} LOGIN"))
        conn.execute(sa.text(f"CREATE DATABASE {quote(name)} OWNER {quote(role)}"))
    unprivileged = Topology(*(url.set(database=name, username=role)
                              for url in (topology.primary, topology.primary, topology.replica)))
    try:
        wait_for(lambda: _answers(unprivileged.replica))  # the role and the database have reached the replica
        yield unprivileged
    finally:
        scratch.drop_database(admin, name)
        with admin.connect() as conn:
            conn.execute(sa.text(f"DROP ROLE IF EXISTS {quote(role)}"))
        admin.dispose()
