"""``migrate_schema`` on a live PostgreSQL: two deploy hosts at once, long transactions, failed index builds.

Every case runs the real command in its own process, as deploy hosts do, against a database that
other connections of the test hold locks on.
"""
from __future__ import annotations

import contextlib
import threading
import time
from typing import Any, Iterator

import pytest
import sqlalchemy as sa

from calls.backfill import health
from calls.sample_data import generate_sample_data
from schema_engine import commands, database, errors, guard, progress, state
from tests.conftest import HEAD, REVISIONS, call, manage, run_sql, start_manage, wait_for

pytestmark = pytest.mark.postgres


@pytest.fixture
def other_session(pg_db: sa.URL) -> Iterator[sa.Connection]:
    """A connection of someone else's: another deploy host, or the application's long transaction."""
    engine = database.create_engine(pg_db)
    with engine.connect() as conn:
        yield conn
    engine.dispose()


def hold_migration_lock(conn: sa.Connection) -> None:
    conn.execute(sa.text("SELECT pg_advisory_lock(:k)"), {"k": guard.MIGRATION_LOCK_KEY})
    conn.commit()  # session-level: it outlives the transaction


def release_migration_lock(conn: sa.Connection) -> None:
    conn.execute(sa.text("SELECT pg_advisory_unlock(:k)"), {"k": guard.MIGRATION_LOCK_KEY})
    conn.commit()


def sessions_on(url: sa.URL) -> int:
    """Return how many sessions are connected to ``url``'s database, besides the one asking."""
    return run_sql(url, "SELECT count(*) FROM pg_stat_activity WHERE datname = current_database() "
                        "AND pid <> pg_backend_pid()")[0][0]


def current(url: sa.URL) -> list[str]:
    return list(state.status(url=url).current)


def test_two_hosts_upgrading_at_once_apply_each_revision_once(pg_db: sa.URL, other_session: sa.Connection) -> None:
    # Both hosts start while a third migrator holds the lock, so both wait, then race for it.
    hold_migration_lock(other_session)
    hosts = [start_manage(pg_db, "migrate_schema", "upgrade", "head") for _ in range(2)]
    # Each host waiting for the lock has two sessions open: its migration connection and the lock's own.
    wait_for(lambda: sessions_on(pg_db) >= 1 + 2 * 2 or any(host.poll() is not None for host in hosts))
    assert all(host.poll() is None for host in hosts), "a host did not wait for the migration lock"
    release_migration_lock(other_session)
    outputs = [host.communicate(timeout=120) for host in hosts]
    assert [host.returncode for host in hosts] == [0, 0], outputs
    stdout = [out for out, _ in outputs]
    assert sum(f"{len(REVISIONS)} revision(s) applied" in out for out in stdout) == 1, stdout
    assert sum("Nothing to do" in out for out in stdout) == 1, stdout
    assert current(pg_db) == [HEAD]


def test_a_host_that_waits_too_long_for_the_lock_stops_with_one_line(pg_db: sa.URL,
                                                                     other_session: sa.Connection) -> None:
    hold_migration_lock(other_session)
    started = time.monotonic()
    result = call(pg_db, "migrate_schema", "upgrade", "head", MIGRATION_LOCK_WAIT_SECONDS="1")
    assert time.monotonic() - started < 30
    assert result.returncode == 1
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("CommandError: another migration holds the migration lock")
    assert "pid" in lines[0] and "MIGRATION_LOCK_WAIT_SECONDS" in lines[0]
    assert current(pg_db) == []


def test_ddl_behind_a_long_transaction_retries_then_gives_up_with_nothing_half_applied(
        pg_db: sa.URL, other_session: sa.Connection) -> None:
    commands.upgrade(revision="002_voice_agent_integration", url=pg_db)
    other_session.execute(sa.text("SELECT count(*) FROM calls"))  # a transaction left open: ACCESS SHARE on calls
    result = call(pg_db, "migrate_schema", "upgrade", "head",
                  MIGRATION_LOCK_TIMEOUT="100ms", MIGRATION_LOCK_RETRIES="2", MIGRATION_RETRY_PAUSE_SECONDS="0.05")
    other_session.rollback()
    assert result.returncode == 1
    errors = [line for line in result.stderr.splitlines() if line.startswith("CommandError")]
    assert errors == [errors[0]] and "could not lock a table within lock_timeout=100ms, 3 tries" in errors[0]
    assert result.stderr.count("retry ") == 2
    assert current(pg_db) == ["002_voice_agent_integration"]
    columns = {c["name"] for c in sa.inspect(database.create_engine(pg_db)).get_columns("calls")}
    assert "total_context_tokens" not in columns  # 003 was rolled back whole


@pytest.fixture
def idle_blocker(pg_db: sa.URL) -> Iterator[int]:
    """The application's session (pid yielded), idle in a transaction holding a lock on calls; the database at 002."""
    commands.upgrade(revision="002_voice_agent_integration", url=pg_db)
    engine = database.create_engine(pg_db, connect_args={"application_name": "voice-agent"})
    with engine.connect() as blocker:
        blocker.execute(sa.text("UPDATE calls SET status = status WHERE id = -1"))
        yield blocker.connection.driver_connection.info.backend_pid
        blocker.invalidate()  # closed whether or not the test had it terminated
    engine.dispose()


def test_each_retry_names_the_session_that_holds_the_lock(pg_db: sa.URL, idle_blocker: int) -> None:
    blocker_pid = idle_blocker
    result = call(pg_db, "migrate_schema", "upgrade", "head", MIGRATION_LOCK_TIMEOUT="500ms",
                  MIGRATION_LOCK_RETRIES="1", MIGRATION_RETRY_PAUSE_SECONDS="0.05")
    assert result.returncode == 1
    retry = next(line for line in result.stderr.splitlines() if "retry 1 " in line)
    named = f"blocked by pid {blocker_pid} (voice-agent, idle in transaction, transaction open "
    assert named in retry and "UPDATE calls SET status = status WHERE id = -1" in retry, retry
    refusal = next(line for line in result.stderr.splitlines() if line.startswith("CommandError"))
    assert named in refusal and "2 tries" in refusal


def test_a_lock_retry_is_an_event_naming_the_blockers(pg_db: sa.URL, idle_blocker: int, settings: Any) -> None:
    settings.MIGRATION_LOCK_TIMEOUT, settings.MIGRATION_LOCK_RETRIES = "500ms", 1
    settings.MIGRATION_RETRY_PAUSE_SECONDS = 0.05
    events: list[progress.Event] = []
    with pytest.raises(errors.LockRetriesExhausted):
        commands.upgrade(revision="head", url=pg_db, reporter=events.append)
    retries = [event for event in events if isinstance(event, guard.LockRetry)]
    assert [retry.attempt for retry in retries] == [1]
    blocker = next(b for b in retries[0].blockers if b.pid == idle_blocker)
    assert (blocker.application, blocker.state) == ("voice-agent", "idle in transaction")
    line = retries[0].describe()
    assert line.startswith("lock_timeout: ") and f"blocked by pid {idle_blocker} (voice-agent, " in line, line
    # The revision that waited was started by each try, and never applied.
    assert [e.revision for e in events if isinstance(e, commands.RevisionStarted)] == ["003_context_management"] * 2
    assert not [e for e in events if isinstance(e, commands.RevisionApplied)]


def test_ddl_succeeds_once_the_long_transaction_ends(pg_db: sa.URL, other_session: sa.Connection) -> None:
    commands.upgrade(revision="002_voice_agent_integration", url=pg_db)
    other_session.execute(sa.text("SELECT count(*) FROM calls"))
    upgrade = start_manage(pg_db, "migrate_schema", "upgrade", "head",
                           MIGRATION_LOCK_TIMEOUT="200ms", MIGRATION_LOCK_RETRIES="1000",
                           MIGRATION_RETRY_PAUSE_SECONDS="0.05")
    seen = []
    for line in upgrade.stderr:  # type: ignore[union-attr]  # until the first retry: the DDL gave up once
        seen.append(line)
        if "retry 1 " in line:
            break
    other_session.rollback()  # the long transaction ends
    out, err = upgrade.communicate(timeout=300)
    assert upgrade.returncode == 0, "".join(seen) + err
    assert any("retry 1 " in line for line in seen)
    assert current(pg_db) == [HEAD]


def test_a_failed_concurrent_index_build_is_reported_and_rebuilt(pg_db: sa.URL, other_session: sa.Connection) -> None:
    commands.upgrade(revision="003_context_management", url=pg_db)
    with database.connect(pg_db) as conn:
        generate_sample_data(connection=conn, calls=50, seed=5)
    # A transaction holding an old snapshot: CREATE INDEX CONCURRENTLY, having created its index,
    # waits for it to end before marking the index valid; lock_timeout ends that wait, which
    # leaves the index INVALID, as a killed or failed build does.
    other_session.execute(sa.text("SET TRANSACTION ISOLATION LEVEL REPEATABLE READ"))
    other_session.execute(sa.text("SELECT count(*) FROM contacts"))
    failed = call(pg_db, "migrate_schema", "upgrade", "head",
                  MIGRATION_LOCK_TIMEOUT="300ms", MIGRATION_LOCK_RETRIES="0")
    assert failed.returncode == 1
    assert "could not lock a table within lock_timeout=300ms, 1 tries" in failed.stderr
    invalid = run_sql(pg_db, "SELECT c.relname FROM pg_index i JOIN pg_class c ON c.oid = i.indexrelid "
                             "WHERE NOT i.indisvalid")
    assert invalid, "the interrupted build left no INVALID index"
    name = invalid[0][0]

    reported = call(pg_db, "migrate_schema", "current")
    assert reported.returncode == 0
    assert f"warning: index {name} on " in reported.stderr and "INVALID" in reported.stderr

    other_session.rollback()
    rebuilt = call(pg_db, "migrate_schema", "upgrade", "head")
    assert rebuilt.returncode == 0, rebuilt.stderr
    assert "INVALID" not in rebuilt.stderr
    assert run_sql(pg_db, "SELECT count(*) FROM pg_index WHERE NOT indisvalid")[0][0] == 0
    assert run_sql(pg_db, "SELECT count(*) FROM pg_class WHERE relname = :n", {"n": name})[0][0] == 1
    assert current(pg_db) == [HEAD]


def test_a_statement_over_statement_timeout_stops_with_one_line(pg_db: sa.URL, other_session: sa.Connection) -> None:
    commands.upgrade(revision="002_voice_agent_integration", url=pg_db)
    other_session.execute(sa.text("SELECT count(*) FROM calls"))  # 003's ALTER TABLE calls waits on it...
    result = call(pg_db, "migrate_schema", "upgrade", "head",
                  MIGRATION_LOCK_TIMEOUT="30s", MIGRATION_STATEMENT_TIMEOUT="500ms")
    other_session.rollback()  # ... longer than statement_timeout, well within lock_timeout
    assert result.returncode == 1
    errors = [line for line in result.stderr.splitlines() if line.startswith("CommandError")]
    assert len(errors) == 1 and "ran longer than statement_timeout=500ms" in errors[0]
    assert current(pg_db) == ["002_voice_agent_integration"]


def test_an_opted_in_limit_terminates_a_blocker_idle_in_its_transaction_and_says_so(
        pg_db: sa.URL, idle_blocker: int) -> None:
    blocker_pid = idle_blocker
    result = manage(pg_db, "migrate_schema", "upgrade", "head", MIGRATION_LOCK_TIMEOUT="500ms",
                    MIGRATION_LOCK_RETRIES="3", MIGRATION_RETRY_PAUSE_SECONDS="0.05",
                    MIGRATION_TERMINATE_IDLE_BLOCKERS_AFTER="0.2")
    assert result.returncode == 0, result.stderr
    retry = next(line for line in result.stderr.splitlines() if "retry 1 " in line)
    assert (f"; terminated pid {blocker_pid} (voice-agent, idle in its transaction " in retry
            and "longer than MIGRATION_TERMINATE_IDLE_BLOCKERS_AFTER=0.2s)" in retry), retry
    assert run_sql(pg_db, "SELECT count(*) FROM pg_stat_activity WHERE pid = :p", {"p": blocker_pid}) == [(0,)]
    assert current(pg_db) == [HEAD]


def test_a_blocker_running_a_query_is_never_terminated(pg_db: sa.URL, other_session: sa.Connection) -> None:
    commands.upgrade(revision="002_voice_agent_integration", url=pg_db)
    other_session.execute(sa.text("SELECT count(*) FROM calls"))
    blocker_pid = other_session.connection.driver_connection.info.backend_pid
    # The blocker then runs a query (active), still holding its lock on calls.
    runner = database.create_engine(pg_db)
    with runner.connect() as conn:
        sleeper = threading.Thread(target=lambda: _run_until_cancelled(other_session), daemon=True)
        sleeper.start()
        def state_of_blocker() -> str | None:
            found = conn.execute(sa.text("SELECT state FROM pg_stat_activity WHERE pid = :p"), {"p": blocker_pid})
            state = found.scalar()
            conn.rollback()  # pg_stat_activity is read once per transaction
            return state

        wait_for(lambda: state_of_blocker() == "active")
        result = manage(pg_db, "migrate_schema", "upgrade", "head", MIGRATION_LOCK_TIMEOUT="300ms",
                        MIGRATION_LOCK_RETRIES="1", MIGRATION_RETRY_PAUSE_SECONDS="0.05",
                        MIGRATION_TERMINATE_IDLE_BLOCKERS_AFTER="0.01")
        conn.execute(sa.text("SELECT pg_cancel_backend(:p)"), {"p": blocker_pid})
        conn.commit()
        sleeper.join()
    runner.dispose()
    assert result.returncode == 1
    assert "terminated" not in result.stderr and f"blocked by pid {blocker_pid} " in result.stderr
    assert current(pg_db) == ["002_voice_agent_integration"]


@contextlib.contextmanager
def idle_in_transaction_on_calls(url: sa.URL, *, application_name: str) -> Iterator[int]:
    """A session (pid yielded) named ``application_name``, idle in a transaction holding a lock on calls."""
    engine = database.create_engine(url, connect_args={"application_name": application_name})
    with engine.connect() as blocker:
        blocker.execute(sa.text("SELECT count(*) FROM calls"))
        yield blocker.connection.driver_connection.info.backend_pid
        blocker.invalidate()
    engine.dispose()


def session_state(url: sa.URL, pid: int) -> str | None:
    found = run_sql(url, "SELECT state FROM pg_stat_activity WHERE pid = :p", {"p": pid})
    return found[0][0] if found else None


@pytest.mark.parametrize("application", [health.APPLICATION_NAME, f"{guard.MIGRATION_APPLICATION_PREFIX}other-host"],
                         ids=["backfill", "another-migrator"])
def test_the_projects_own_sessions_are_never_terminated(pg_db: sa.URL, application: str) -> None:
    """A backfill worker idle in its transaction while it counts tokens is the project's own:
    ending it fails its run."""
    commands.upgrade(revision="002_voice_agent_integration", url=pg_db)
    with idle_in_transaction_on_calls(pg_db, application_name=application) as blocker_pid:
        result = manage(pg_db, "migrate_schema", "upgrade", "head", MIGRATION_LOCK_TIMEOUT="300ms",
                        MIGRATION_LOCK_RETRIES="2", MIGRATION_RETRY_PAUSE_SECONDS="0.05",
                        MIGRATION_TERMINATE_IDLE_BLOCKERS_AFTER="0.01")
        assert session_state(pg_db, blocker_pid) == "idle in transaction", result.stderr
    assert result.returncode == 1, result.stderr
    assert "terminated" not in result.stderr
    retries = [line for line in result.stderr.splitlines() if " retry " in line]
    assert len(retries) == 2 and all(f"left pid {blocker_pid} alone ({application}: the project's own session)"
                                     in line for line in retries), retries
    refusal = next(line for line in result.stderr.splitlines() if line.startswith("CommandError"))
    assert "could not lock a table within lock_timeout=300ms, 3 tries" in refusal
    assert "MIGRATION_TERMINATE_IDLE_BLOCKERS_AFTER ends sessions" not in refusal  # it is on already
    assert current(pg_db) == ["002_voice_agent_integration"]


@pytest.mark.parametrize("granted", [[], ["pg_read_all_stats"]], ids=["no-grants", "read-all-stats-only"])
def test_a_role_that_may_not_see_or_end_the_blocker_says_what_it_lacks_and_goes_on_retrying(
        pg_db: sa.URL, postgres_admin: sa.Engine, unprivileged_roles: tuple[sa.URL, sa.URL],
        granted: list[str]) -> None:
    migrator, application = unprivileged_roles
    quote = postgres_admin.dialect.identifier_preparer.quote
    with postgres_admin.connect() as admin:
        for role in granted:
            admin.execute(sa.text(f"GRANT {role} TO {quote(migrator.username)}"))
    commands.upgrade(revision="002_voice_agent_integration", url=migrator)  # the migrator owns the tables
    run_sql(migrator, f"GRANT SELECT ON calls TO {quote(application.username)}")
    with idle_in_transaction_on_calls(application, application_name="voice-agent") as blocker_pid:
        result = manage(migrator, "migrate_schema", "upgrade", "head", MIGRATION_LOCK_TIMEOUT="300ms",
                        MIGRATION_LOCK_RETRIES="2", MIGRATION_RETRY_PAUSE_SECONDS="0.05",
                        MIGRATION_TERMINATE_IDLE_BLOCKERS_AFTER="0.01")
        assert session_state(pg_db, blocker_pid) == "idle in transaction", result.stderr
    assert result.returncode == 1, result.stderr
    lacking = (f"cannot see who blocks (GRANT pg_read_all_stats TO {migrator.username})" if not granted
               else f"could not end pid {blocker_pid} (GRANT pg_signal_backend TO {migrator.username})")
    retries = [line for line in result.stderr.splitlines() if " retry " in line]
    assert len(retries) == 2 and all(lacking in line for line in retries), result.stderr
    refusal = next(line for line in result.stderr.splitlines() if line.startswith("CommandError"))
    assert "could not lock a table within lock_timeout=300ms, 3 tries" in refusal and lacking in refusal, refusal
    assert "MIGRATION_TERMINATE_IDLE_BLOCKERS_AFTER ends sessions" not in refusal  # it is on already
    assert "terminated" not in result.stderr
    assert current(pg_db) == ["002_voice_agent_integration"]


def _run_until_cancelled(conn: sa.Connection) -> None:
    try:
        conn.execute(sa.text("SELECT pg_sleep(600)"))
    except sa.exc.DBAPIError:
        pass  # cancelled by the test
    conn.rollback()


def test_plan_warns_of_long_transactions_on_the_tables_pending_revisions_touch(
        pg_db: sa.URL, other_session: sa.Connection) -> None:
    commands.upgrade(revision="002_voice_agent_integration", url=pg_db)  # 003 alters calls and conversation_history
    other_session.execute(sa.text("SELECT count(*) FROM calls"))
    other_session.execute(sa.text("SELECT count(*) FROM contacts"))  # no pending revision touches contacts
    blocker_pid = other_session.connection.driver_connection.info.backend_pid
    result = call(pg_db, "migrate_schema", "plan", MIGRATION_LONG_TRANSACTION_SECONDS="0")
    other_session.rollback()
    assert result.returncode == 0, result.stderr
    warnings = [line for line in result.stdout.splitlines() if line.startswith("  warning: ")]
    assert len(warnings) == 1, result.stdout
    assert warnings[0].startswith(f"  warning: pid {blocker_pid} (") and "has held a lock on calls" in warnings[0]
