"""The application through PgBouncer in transaction pooling mode, with the engine's sessions on the primary."""
from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import psycopg
import pytest

from calls.sample_data import generate_sample_data
from schema_engine import commands, database, errors, state
from tests.conftest import HEAD, REVISIONS, ROOT, django_url, start_manage
from tests.topology.conftest import Topology, host_env, manage


def test_two_concurrent_upgrades_through_the_topology_apply_each_revision_once(topology_db: Topology) -> None:
    env = host_env(topology_db)
    upgrades = [subprocess.Popen([sys.executable, "manage.py", "migrate_schema", "upgrade", "head"], cwd=ROOT, env=env,
                                 stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True) for _ in range(2)]
    outputs = [upgrade.communicate(timeout=600) for upgrade in upgrades]
    assert [upgrade.returncode for upgrade in upgrades] == [0, 0], outputs
    applied = [line.split()[1] for out, _ in outputs for line in out.splitlines() if line.startswith("  Applied ")]
    # Each revision applied by one of the two, once; the other waited for the lock and found the rest done.
    assert sorted(applied) == sorted(REVISIONS), outputs
    current = manage(topology_db, "migrate_schema", "current")
    assert current.returncode == 0 and HEAD in current.stdout, current.stderr


def test_the_commands_and_the_admin_work_through_pgbouncer(topology_db: Topology) -> None:
    assert manage(topology_db, "migrate_schema").returncode == 0
    created = manage(topology_db, "createsuperuser", "--noinput", "--username", "ops", "--email", "ops@example.com",
                     DJANGO_SUPERUSER_PASSWORD="a-long-passphrase")
    assert created.returncode == 0, created.stderr
    seeded = manage(topology_db, "generate_sample_data", "--calls", "20")
    assert seeded.returncode == 0, seeded.stderr
    filled = manage(topology_db, "backfill_context")
    assert filled.returncode == 0 and "calls: " in filled.stdout and "complete" in filled.stdout, filled.stderr
    pages = ("/admin/", "/admin/calls/call/", "/admin/calls/conversationmessage/", "/admin/calls/call/1/change/",
             "/admin/monitoring/workflowtrace/", "/admin/operations/", "/admin/metrics/")
    probe = ("from django.contrib.auth import get_user_model; from django.test import Client; c = Client(); "
             "c.force_login(get_user_model().objects.get(username='ops')); "
             f"print(*[c.get(p, secure=True).status_code for p in {pages!r}])")
    result = manage(topology_db, "shell", "-v", "0", "-c", probe, ALLOWED_HOSTS="testserver")
    assert result.stdout.split() == ["200"] * len(pages), result.stdout + result.stderr


@pytest.mark.parametrize("command", [["migrate_schema", "upgrade", "head"], ["backfill_context"]])
def test_without_a_session_url_through_pgbouncer_the_work_is_refused(topology_db: Topology, command: list[str]) -> None:
    result = manage(topology_db, *command, MIGRATION_DATABASE_URL="")
    assert result.returncode == 1
    assert len(result.stderr.strip().splitlines()) == 1 and "MIGRATION_DATABASE_URL" in result.stderr, result.stderr


def test_a_backfill_joined_from_two_hosts_through_the_topology_finishes_once(topology_db: Topology) -> None:
    assert manage(topology_db, "migrate_schema").returncode == 0
    assert manage(topology_db, "generate_sample_data", "--calls", "60").returncode == 0
    env = topology_db.environment()
    hosts = [start_manage(django_url(topology_db.pooler), "backfill_context", "--only", "messages",
                          "--batch-size", "25", **env)
             for _ in range(2)]
    outputs = [host.communicate(timeout=600) for host in hosts]
    assert [host.returncode for host in hosts] == [0, 0], outputs
    assert sum("joining run 1" in out for out, _ in outputs) <= 1


def _pool_mode_unset(topology: Topology) -> dict[str, str]:
    """An application host whose DATABASE_URL goes through PgBouncer, with neither DATABASE_POOL_MODE
    nor MIGRATION_DATABASE_URL."""
    env = host_env(topology)
    for name in ("DATABASE_POOL_MODE", "MIGRATION_DATABASE_URL"):
        env.pop(name, None)
    return env


def _left_on_the_pooler(topology: Topology) -> tuple[tuple[str, ...], int]:
    """What a pooled connection's session settings read, and the advisory locks held in the database
    (on the primary)."""
    with psycopg.connect(django_url(topology.pooler), autocommit=True, prepare_threshold=None) as pooled:
        shown = tuple(pooled.execute(f"SHOW {name}").fetchone()[0]
                      for name in ("lock_timeout", "statement_timeout", "synchronous_commit"))
    with psycopg.connect(django_url(topology.primary), autocommit=True) as primary:
        locks = primary.execute("SELECT count(*) FROM pg_locks WHERE locktype = 'advisory' AND database = "
                                "(SELECT oid FROM pg_database WHERE datname = current_database())").fetchone()[0]
    return shown, locks


@pytest.mark.parametrize("command", [["manage.py", "migrate_schema", "upgrade", "head"],
                                     ["manage.py", "migrate_schema", "plan"],
                                     ["manage.py", "backfill_context"], ["alembic", "upgrade", "head"]],
                         ids=lambda c: "-".join(c[:2]))
def test_through_pgbouncer_with_the_pool_mode_unset_the_engine_refuses_and_leaves_nothing(
        topology_db: Topology, command: list[str]) -> None:
    # Revisions pending (their checksums and data checks read before any lock), or none for the backfill.
    commands.upgrade(revision="head" if command[1] == "backfill_context" else "003_context_management",
                     url=topology_db.primary)
    with database.connect(topology_db.primary) as conn:
        generate_sample_data(connection=conn, calls=5, seed=6)
    before = state.status(url=topology_db.primary).current
    if command[0] == "manage.py":
        program = [sys.executable, *command]
    else:
        program = [str(Path(sys.executable).parent / "alembic"), *command[1:]]
    result = subprocess.run(program, cwd=ROOT, capture_output=True, text=True, env=_pool_mode_unset(topology_db),
                            timeout=600)
    # manage.py: one line on stderr; the alembic CLI: its one FAILED line on stdout (and its log's copy).
    said = (result.stderr if command[0] == "manage.py" else result.stdout).strip().splitlines()
    assert result.returncode != 0 and len(said) == 1, result.stdout + result.stderr
    assert "hands one server session to several connections" in said[0] and "MIGRATION_DATABASE_URL" in said[0]
    assert "Traceback" not in result.stderr
    assert state.status(url=topology_db.primary).current == before  # nothing applied
    if command[1] == "backfill_context":
        with database.connect(topology_db.primary) as conn:
            assert conn.exec_driver_sql("SELECT count(*) FROM backfill_runs").scalar_one() == 0
    assert _left_on_the_pooler(topology_db) == (("0", "0", "on"), 0)


def test_the_pooler_is_told_from_a_direct_connection(topology_db: Topology) -> None:
    database.require_session(topology_db.primary)  # MIGRATION_DATABASE_URL: a session of its own
    with pytest.raises(errors.SessionRequired, match="set MIGRATION_DATABASE_URL to the primary itself"):
        database.require_session(topology_db.pooler)
    upgraded = subprocess.run([sys.executable, "manage.py", "migrate_schema", "upgrade", "head"], cwd=ROOT,
                              capture_output=True, text=True, timeout=600,
                              env={**_pool_mode_unset(topology_db),
                                   "MIGRATION_DATABASE_URL": django_url(topology_db.primary)})
    assert upgraded.returncode == 0, upgraded.stderr
    assert _left_on_the_pooler(topology_db) == (("0", "0", "on"), 0)
