"""``scripts/deploy`` and ``scripts/rollback`` end to end against PostgreSQL, as an operator runs them."""
from __future__ import annotations

import contextlib
import os
import signal
import stat
import subprocess
import sys
from pathlib import Path
from typing import Iterator

import pytest
import sqlalchemy as sa

from calls.sample_data import generate_sample_data
from schema_engine import commands, database, guard, state
from tests.conftest import REVISIONS, ROOT, cli_environment, run_sql, wait_for

pytestmark = pytest.mark.postgres


def script(name: str, url: sa.URL | str, *args: str, backups: Path, **env: str) -> subprocess.CompletedProcess[str]:
    env = cli_environment(url, ENV_FILE="/dev/null",
                          BACKUP_DIR=str(backups), PYTHON=sys.executable, **env)
    return subprocess.run(["bash", str(ROOT / "scripts" / name), *args], cwd=ROOT, env=env, capture_output=True,
                          text=True, timeout=300)


def counts(url: sa.URL) -> tuple[int, int]:
    return run_sql(url, "SELECT (SELECT count(*) FROM calls), (SELECT count(*) FROM conversation_history)")[0]


def test_deploy_then_rollback_with_restore(make_database, tmp_path: Path) -> None:
    url = make_database("postgresql")
    commands.upgrade(revision="003_context_management", url=url)
    with database.connect(url) as conn:
        generate_sample_data(connection=conn, calls=30, seed=9)
    before = counts(url)

    deployed = script("deploy", url, backups=tmp_path)
    assert deployed.returncode == 0, deployed.stdout + deployed.stderr
    for number in range(1, 8):
        assert f"==> step {number}:" in deployed.stdout
    assert state.status(url=url).current == (REVISIONS[-1],)
    assert run_sql(url, "SELECT count(*) FROM conversation_history WHERE token_count IS NULL")[0][0] == 0
    (dump,) = tmp_path.glob("*-at-003_context_management-*.dump")
    (preview,) = tmp_path.glob("migration_preview_*.sql")
    assert "CREATE INDEX CONCURRENTLY" in preview.read_text()
    assert "To restore it: manage.py migrate_schema restore " in deployed.stdout

    rolled_back = script("rollback", url, "003_context_management", "--restore", str(dump), backups=tmp_path)
    assert rolled_back.returncode == 0, rolled_back.stdout + rolled_back.stderr
    assert state.status(url=url).current == ("003_context_management",)
    assert counts(url) == before
    # The backup was taken before the backfill: restored, the counts are unfilled again.
    assert run_sql(url, "SELECT count(*) FROM conversation_history WHERE token_count IS NOT NULL")[0][0] == 0


def test_deploy_stops_at_the_plan_when_it_is_not_safe(make_database, tmp_path: Path) -> None:
    url = make_database("postgresql")
    commands.upgrade(revision="004_performance_indexes", url=url)
    run_sql(url, "CREATE INDEX ix_leftover ON contacts (city)")
    run_sql(url, "UPDATE pg_index SET indisvalid = false WHERE indexrelid = 'ix_leftover'::regclass")
    result = script("deploy", url, backups=tmp_path)
    assert result.returncode == 1
    assert "deploy: step 2 (plan" in result.stderr and "ix_leftover" in result.stderr
    assert "==> step 3" not in result.stdout and list(tmp_path.iterdir()) == []
    assert state.status(url=url).current == ("004_performance_indexes",)


def test_deploy_stops_at_the_rehearsal_when_the_stamp_is_wrong(make_database, tmp_path: Path) -> None:
    url = make_database("postgresql")
    commands.upgrade(revision="head", url=url)
    commands.stamp(revision="004_performance_indexes", url=url)  # the schema is at head, the stamp says 004
    result = script("deploy", url, backups=tmp_path)
    assert result.returncode == 1
    assert "==> step 2:" in result.stdout and "deploy: step 3 (rehearse" in result.stderr
    assert "rehearsal: revision 005_backfill_runs cannot apply to this schema" in result.stderr
    assert "==> step 4" not in result.stdout and list(tmp_path.iterdir()) == []
    assert state.status(url=url).current == ("004_performance_indexes",)


def test_deploy_against_a_dead_database_stops_at_step_one(tmp_path: Path) -> None:
    result = script("deploy", "postgresql://postgres:secret@127.0.0.1:1/none", backups=tmp_path)
    assert result.returncode == 1
    assert "deploy: step 1 (check current state) failed" in result.stderr
    assert "cannot connect to the database" in result.stderr and "secret" not in result.stderr + result.stdout


@pytest.fixture
def app_hooks(tmp_path: Path) -> dict[str, str]:
    """APP_STOP_COMMAND / APP_START_COMMAND that leave a mark, as systemctl would change the app's state."""
    marks = tmp_path / "app"
    marks.mkdir()
    return {"APP_STOP_COMMAND": f"touch {marks}/stopped", "APP_START_COMMAND": f"touch {marks}/started",
            "marks": str(marks)}


def hooks(app_hooks: dict[str, str]) -> dict[str, str]:
    return {key: value for key, value in app_hooks.items() if key.startswith("APP_")}


@pytest.mark.parametrize("args", [["nonsense_rev"], ["--restore", "/missing.dump"], ["-9"],
                                  ["003_context_management", "--restore", "/missing.dump"]],
                         ids=["unknown-revision", "missing-backup", "below-base", "revision-and-missing-backup"])
def test_rollback_checks_its_arguments_before_it_stops_the_application(
        make_database, tmp_path: Path, app_hooks: dict[str, str], args: list[str]) -> None:
    url = make_database("postgresql")
    commands.upgrade(revision="head", url=url)
    result = script("rollback", url, *args, backups=tmp_path, **hooks(app_hooks))
    assert result.returncode == 1
    assert "rollback: step 0 (check" in result.stderr and "==> step 1" not in result.stdout
    assert not (Path(app_hooks["marks"]) / "stopped").exists()
    assert state.status(url=url).current == (REVISIONS[-1],)


def test_rollback_one_revision_stops_and_starts_the_application(make_database, tmp_path: Path,
                                                                app_hooks: dict[str, str]) -> None:
    url = make_database("postgresql")
    commands.upgrade(revision="head", url=url)
    result = script("rollback", url, "-1", backups=tmp_path, **hooks(app_hooks))
    assert result.returncode == 0, result.stdout + result.stderr
    assert state.status(url=url).current == (REVISIONS[-2],)
    assert {p.name for p in Path(app_hooks["marks"]).iterdir()} == {"stopped", "started"}


def test_a_failure_after_the_stop_says_the_application_is_stopped(make_database, tmp_path: Path,
                                                                  app_hooks: dict[str, str]) -> None:
    url = make_database("postgresql")
    commands.upgrade(revision="head", url=url)
    not_a_backup = tmp_path / "notes.dump"
    not_a_backup.write_text("not a backup\n")
    result = script("rollback", url, "-1", "--restore", str(not_a_backup), backups=tmp_path, **hooks(app_hooks))
    assert result.returncode == 1
    assert "rollback: step 3 (restore" in result.stderr and "not a backup of this schema" in result.stderr
    assert f"the application is STOPPED; once the database is right, start it: {app_hooks['APP_START_COMMAND']}" \
        in result.stderr
    assert {p.name for p in Path(app_hooks["marks"]).iterdir()} == {"stopped"}


@pytest.mark.parametrize(("name", "args"), [("deploy", ["now"]), ("rollback", ["--bogus"]),
                                            ("rollback", ["-1", "003_context_management"]),
                                            ("rollback", ["--restore"])])
def test_unknown_arguments_are_refused(tmp_path: Path, name: str, args: list[str]) -> None:
    result = script(name, "postgresql://postgres@127.0.0.1:1/none", *args, backups=tmp_path)
    assert result.returncode == 2
    assert len(result.stderr.strip().splitlines()) == 1 and result.stdout == ""


@pytest.mark.parametrize("value", ["yes", "1; touch pwned", "$(touch pwned)"])
def test_a_forecast_setting_other_than_0_or_1_is_refused_before_anything_runs(tmp_path: Path, value: str) -> None:
    result = script("deploy", "postgresql://postgres@127.0.0.1:1/none", backups=tmp_path, DEPLOY_FORECAST=value)
    assert result.returncode == 2 and result.stdout == ""
    assert result.stderr.strip().splitlines() == [f"deploy: DEPLOY_FORECAST must be 0 or 1 (got: {value})"]
    assert not (ROOT / "pwned").exists() and not (tmp_path / "pwned").exists()


def test_no_setting_becomes_shell_text(make_database, tmp_path: Path) -> None:
    url = make_database("postgresql")
    commands.upgrade(revision="head", url=url)
    pwned = tmp_path / "pwned"
    backups = tmp_path / f"x $(touch {pwned})"
    result = script("deploy", url, backups=backups)
    assert result.returncode == 0, result.stdout + result.stderr
    assert not pwned.exists()
    assert list(backups.glob("migration_preview_*.sql"))  # the name is a directory, as written


def test_a_setting_is_never_pasted_into_sql(make_database, tmp_path: Path) -> None:
    url = make_database("postgresql")
    result = script("deploy", url, backups=tmp_path, MIGRATION_LOCK_TIMEOUT="5s'; DROP TABLE calls; --")
    assert result.returncode == 1
    assert "deploy: step 1" in result.stderr
    assert "configuration error: MIGRATION_LOCK_TIMEOUT=" in result.stderr and "is not a duration" in result.stderr
    assert "DROP TABLE calls" not in result.stdout


def test_backups_and_previews_are_private_and_no_password_is_shown(make_database, tmp_path: Path) -> None:
    """Backups hold contacts and password hashes: 0600 in a 0700 folder; the password never reaches a log."""
    url = make_database("postgresql").set(password="s3cret-pw")  # trust auth here: any password is let in
    commands.upgrade(revision="003_context_management", url=url)
    backups = tmp_path / "backups"
    result = script("deploy", url, backups=backups)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "s3cret-pw" not in result.stdout + result.stderr
    assert stat.S_IMODE(backups.stat().st_mode) == 0o700
    files = list(backups.iterdir())
    assert {f.suffix for f in files} == {".dump", ".sql"}
    assert all(stat.S_IMODE(f.stat().st_mode) == 0o600 for f in files), [oct(f.stat().st_mode) for f in files]


# --- interrupted: SIGTERM from timeout or a CI runner's cancel ------------------------------------

def children_of(pid: int) -> list[int]:
    """Return the pids of ``pid``'s child processes, read from /proc."""
    found = []
    for stat_file in Path("/proc").glob("[0-9]*/stat"):
        with contextlib.suppress(OSError):
            parent = int(stat_file.read_text().rsplit(")", 1)[1].split()[1])  # the name may hold ")"
            if parent == pid:
                found.append(int(stat_file.parent.name))
    return found


def alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    return True


def migrator_waits_for_a_lock(url: sa.URL, table: str) -> bool:
    """Whether a migrate_schema session waits for a lock on ``table`` (its DDL queued behind a transaction)."""
    return run_sql(url, "SELECT count(*) FROM pg_locks l JOIN pg_stat_activity a ON a.pid = l.pid "
                        "WHERE NOT l.granted AND l.relation = to_regclass(:table) AND starts_with(a.application_name, "
                        ":engine) AND l.database = (SELECT oid FROM pg_database WHERE datname = current_database())",
                   {"table": table, "engine": guard.MIGRATION_APPLICATION_PREFIX})[0][0] > 0


@contextlib.contextmanager
def running_script(name: str, url: sa.URL, *args: str, blocked_table: str, backups: Path,
                   **env: str) -> Iterator[tuple[subprocess.Popen[str], list[int]]]:
    """Start ``scripts/NAME`` while a transaction holds a lock on ``blocked_table``; yield it and its children
    once its migrate_schema step waits for that lock. Whatever is left is ended and released afterwards."""
    holder = database.create_engine(url).connect()
    holder.execute(sa.text(f"SELECT count(*) FROM {blocked_table}"))  # ACCESS SHARE: the step's DDL waits on it
    env = cli_environment(url, ENV_FILE="/dev/null", BACKUP_DIR=str(backups), PYTHON=sys.executable,
                          MIGRATION_LOCK_TIMEOUT="10min", **env)
    process = subprocess.Popen(["bash", str(ROOT / "scripts" / name), *args], cwd=ROOT, env=env,
                               stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    children: list[int] = []
    try:
        wait_for(lambda: migrator_waits_for_a_lock(url, blocked_table) or process.poll() is not None)
        assert process.poll() is None, process.communicate()
        children.extend(children_of(process.pid))
        yield process, children
    finally:
        holder.rollback()
        holder.close()
        for pid in children:  # an orphan the script left behind
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
        if process.poll() is None:
            process.kill()
            process.communicate()


def test_sigterm_to_deploy_is_passed_on_to_the_running_step_which_rolls_back(make_database, tmp_path: Path) -> None:
    url = make_database("postgresql")
    commands.upgrade(revision="002_voice_agent_integration", url=url)
    with running_script("deploy", url, blocked_table="calls", backups=tmp_path) as (deploy, children):
        assert len(children) == 1, children  # the step's command itself, no shell in between
        deploy.send_signal(signal.SIGTERM)  # the script only, as a CI runner's cancel reaches it
        out, err = deploy.communicate(timeout=120)
        orphans = [pid for pid in children if alive(pid)]
    assert deploy.returncode == 130, out + err
    assert orphans == []
    assert "==> step 5: back up, then apply" in out and "==> step 6" not in out
    assert err.strip().splitlines()[-2:] == [
        "CommandError: interrupted; revision 003_context_management rolled back; "
        "the database is at 002_voice_agent_integration",
        "deploy: interrupted (SIGTERM) during step 5 (back up, then apply); the step was stopped (its last line "
        "says what it left); nothing after it ran"]
    assert state.status(url=url).current == ("002_voice_agent_integration",)


def test_sigterm_to_rollback_stops_the_downgrade_and_says_the_application_is_stopped(
        make_database, tmp_path: Path, app_hooks: dict[str, str]) -> None:
    url = make_database("postgresql")
    commands.upgrade(revision="head", url=url)
    with running_script("rollback", url, "-1", blocked_table="backfill_runs", backups=tmp_path,
                        **hooks(app_hooks)) as (rollback, children):
        rollback.send_signal(signal.SIGTERM)
        out, err = rollback.communicate(timeout=120)
        orphans = [pid for pid in children if alive(pid)]
    assert rollback.returncode == 130, out + err
    assert orphans == []
    assert "==> step 2: downgrade to -1" in out and "==> step 4" not in out
    assert err.strip().splitlines()[-3:] == [
        f"CommandError: interrupted; revision {REVISIONS[-1]} rolled back; the database is at {REVISIONS[-1]}",
        "rollback: interrupted (SIGTERM) during step 2 (downgrade to -1); the step was stopped (its last line "
        "says what it left); nothing after it ran",
        f"rollback: the application is STOPPED; once the database is right, start it: {app_hooks['APP_START_COMMAND']}"]
    assert state.status(url=url).current == (REVISIONS[-1],)
    assert {p.name for p in Path(app_hooks["marks"]).iterdir()} == {"stopped"}
