"""``manage.py migrate_schema`` and the plain ``alembic`` CLI, as operators and deploy scripts use them."""
from __future__ import annotations

import io
import re
import signal
import subprocess
import sys
from pathlib import Path

import pytest
import sqlalchemy as sa
from django.core.management import CommandError, call_command

from schema_engine import commands, config, database, state
from tests.conftest import (
    REVISIONS,
    ROOT,
    call,
    cli_environment,
    django_url,
    error_lines,
    run_cli,
    run_sql,
    wait_for,
)


def migrate_schema(*args: str) -> str:
    out = io.StringIO()
    call_command("migrate_schema", *args, stdout=out)
    return out.getvalue()


@pytest.fixture
def on_db(django_database, empty_db: sa.URL) -> sa.URL:
    """An empty database that ``migrate_schema`` (Django's default connection) works on."""
    django_database(empty_db)
    return empty_db


def test_no_arguments_upgrades_to_head_reporting_each_revision(on_db: sa.URL) -> None:
    output = migrate_schema()
    for revision in REVISIONS:
        assert f"Applied {revision}" in output
    lines = [line for line in output.splitlines() if "Applied" in line]
    assert all(line.split()[2].endswith("s") for line in lines), "each revision reports its duration"
    assert f"{len(REVISIONS)} revision(s) applied; database is at {REVISIONS[-1]}" in output
    assert "Nothing to do" in migrate_schema("upgrade")


def test_status_subcommands(on_db: sa.URL) -> None:
    migrate_schema("upgrade", "003_context_management")
    assert "003_context_management" in migrate_schema("current")
    assert f"{REVISIONS[-1]} (head)" in migrate_schema("heads")
    history = migrate_schema("history", "--verbose")
    assert history.index("004_performance_indexes") < history.index("26a6cb1543c8")
    assert "Parent: 002_voice_agent_integration" in migrate_schema("show", "003_context_management")
    migrate_schema("stamp", "002_voice_agent_integration")
    assert "002_voice_agent_integration" in migrate_schema("current")
    migrate_schema("stamp", "003_context_management")
    migrate_schema("downgrade", "-1")
    assert "002_voice_agent_integration" in migrate_schema("current")
    assert state.status(url=on_db).pending[0][0] == "003_context_management"


def test_sql_preview_starts_from_the_current_revision_and_changes_nothing(on_db: sa.URL) -> None:
    migrate_schema("upgrade", "002_voice_agent_integration")
    preview = migrate_schema("upgrade", "head", "--sql")
    assert "context_pruned" in preview and "ix_calls_created_at_covering" in preview
    assert "CREATE TABLE contacts" not in preview  # already applied: not in the preview
    if on_db.get_backend_name() == "postgresql":
        assert ("CREATE INDEX CONCURRENTLY ix_calls_created_at_covering "
                "ON calls (created_at) INCLUDE (status, tier, total_cost)") in preview
    assert state.status(url=on_db).current == ("002_voice_agent_integration",)
    if on_db.get_backend_name() == "sqlite":
        with pytest.raises(CommandError, match="--sql cannot render this step on SQLite"):
            migrate_schema("downgrade", "001_langsmith_monitoring", "--sql")
    else:
        rollback = migrate_schema("downgrade", "001_langsmith_monitoring", "--sql")
        assert "DROP TABLE agent_transitions" in rollback
    assert state.status(url=on_db).current == ("002_voice_agent_integration",)


def test_check_and_autogenerate_through_the_command(on_db: sa.URL) -> None:
    migrate_schema()
    assert "matches the models" in migrate_schema("check")
    run_sql(on_db, "ALTER TABLE calls ADD COLUMN stray INTEGER")
    with pytest.raises(CommandError, match="differ.*revision --autogenerate") as caught:
        migrate_schema("check")
    assert caught.value.returncode == 2


def test_multiple_heads_are_refused_until_merged(on_db: sa.URL, scratch_migrations: Path) -> None:
    (scratch_migrations / "versions" / "b1_branch.py").write_text(
        '"""A branch from 003, as a second developer would write it."""\n'
        'revision = "b1_branch"\ndown_revision = "003_context_management"\n'
        "branch_labels = None\ndepends_on = None\n\n"
        "def upgrade() -> None:\n    pass\n\n\ndef downgrade() -> None:\n    pass\n"
    )
    with pytest.raises(CommandError, match="multiple heads.*merge heads"):
        migrate_schema("upgrade")
    assert "Created merge revision" in migrate_schema("merge", "heads", "-m", "merge branches")
    migrate_schema("upgrade")
    assert state.status(url=on_db).at_head


@pytest.mark.parametrize("command", ["migrate", "makemigrations"])
def test_django_migrations_refuse_naming_migrate_schema(command: str) -> None:
    with pytest.raises(CommandError, match="migrate_schema"):
        call_command(command)


# Bad input from an operator: one clear line on stderr, a non-zero exit, no traceback, no password.
BAD_INPUT = [
    pytest.param(["upgrade", "nope"], None, "Can't locate revision identified by 'nope'", id="unknown-revision"),
    pytest.param(["downgrade", "-1"], None, "below base", id="below-base"),
    pytest.param(["show", "xyz"], None, "Can't locate revision", id="show-unknown"),
    pytest.param([], "postgresql://ops:hunter2@127.0.0.1:1/reautomation", "cannot connect to the database",
                 id="dead-database"),
    pytest.param(["current"], "postgresql://ops:hunter2@127.0.0.1:notaport/reautomation", "is malformed",
                 id="malformed-url"),
    pytest.param(["current"], "mysql://ops:hunter2@127.0.0.1/reautomation", "not a postgresql:// or sqlite:///",
                 id="unsupported-url"),
]


@pytest.mark.parametrize(("args", "url", "message"), BAD_INPUT)
def test_bad_input_is_one_line_and_a_nonzero_exit(tmp_path: Path, args: list[str], url: str | None,
                                                  message: str) -> None:
    url = url or f"sqlite:///{tmp_path}/empty.sqlite3"
    result = run_cli(sys.executable, "manage.py", "migrate_schema", *args, database_url=url)
    assert result.returncode != 0
    errors = result.stderr.strip().splitlines()
    assert len(errors) == 1 and message in errors[0], result.stderr
    assert "Traceback" not in result.stderr and "hunter2" not in result.stdout + result.stderr


def test_createsuperuser_works_after_upgrade_head(make_database) -> None:
    url = django_url(make_database("postgresql"))
    assert run_cli(sys.executable, "manage.py", "migrate_schema", database_url=url).returncode == 0
    result = run_cli(sys.executable, "manage.py", "createsuperuser", "--noinput", "--username", "ops",
                     "--email", "ops@example.com", database_url=url, DJANGO_SUPERUSER_PASSWORD="a-long-passphrase")
    assert result.returncode == 0, result.stderr
    assert "Superuser created" in result.stdout


def test_plain_alembic_cli_works_on_the_same_database(tmp_path: Path) -> None:
    """The guide's users type ``alembic current``: it sees what ``migrate_schema`` did, and vice versa."""
    url = f"sqlite:///{tmp_path}/shared.sqlite3"
    alembic = str(Path(sys.executable).parent / "alembic")
    assert call(url, "migrate_schema", "upgrade", "003_context_management").returncode == 0
    current = run_cli(alembic, "current", database_url=url)
    assert current.returncode == 0 and "003_context_management" in current.stdout
    assert run_cli(alembic, "upgrade", "head", database_url=url).returncode == 0
    assert f"{REVISIONS[-1]} (head)" in call(url, "migrate_schema", "current").stdout
    failed = run_cli(alembic, "upgrade", "nope", database_url=url)
    assert failed.returncode != 0 and "Traceback" not in failed.stderr
    assert "FAILED: Can't locate revision identified by 'nope'" in failed.stdout


def progress_lines(output: str, *, logged: bool) -> list[str]:
    """Return the progress lines of a run, durations masked: ``migrate_schema``'s indented lines,
    or the plain CLI's log."""
    if logged:
        lines = [line.split("[alembic.env] ", 1)[1] for line in output.splitlines() if "[alembic.env] " in line]
        lines = [line for line in lines if not line.startswith("Database: ")]
    else:
        lines = [line.strip() for line in output.splitlines() if line.startswith("  ")]
    return [re.sub(r"\b\d+\.\d\ds\b", "N.NNs", line) for line in lines]


def test_the_plain_alembic_cli_logs_the_lines_migrate_schema_prints(make_database, backend: str) -> None:
    """One progress channel: each revision applied or reverted, and the rows archived and restored, said alike."""
    alembic = str(Path(sys.executable).parent / "alembic")
    said: dict[str, list[str]] = {}
    for spelling in ("migrate_schema", "alembic"):
        url = make_database(backend)
        run = [sys.executable, "manage.py", "migrate_schema"] if spelling == "migrate_schema" else [alembic]
        steps = [run_cli(*run, "upgrade", "head", database_url=url)]
        run_sql(url, "INSERT INTO backfill_runs (id, backfill, status) VALUES (101, 'messages', 'completed')")
        steps += [run_cli(*run, "downgrade", "004_performance_indexes", database_url=url),
                  run_cli(*run, "upgrade", "head", database_url=url)]
        assert all(step.returncode == 0 for step in steps), [step.stderr for step in steps]
        said[spelling] = [line for step in steps
                          for line in progress_lines(step.stdout if spelling == "migrate_schema" else step.stderr,
                                                     logged=spelling == "alembic")]
    assert "archived 1 row(s) of backfill_runs in archive_005_backfill_runs; the next upgrade puts them back" \
        in said["migrate_schema"]
    assert len([line for line in said["migrate_schema"] if line.startswith("Applied ")]) == len(REVISIONS) + 2
    # The same lines; migrate_schema says a revision's archive under the revision's line, the log as it happens.
    assert sorted(said["alembic"]) == sorted(said["migrate_schema"])


def test_every_database_command_names_the_database_first(pg_db_url: str) -> None:
    """An operator who forgot the export sees which database a command acts on (password hidden)."""
    url = pg_db_url.replace("postgresql://postgres@", "postgresql://postgres:hunter2@")
    for args in (["upgrade", "002_voice_agent_integration"], ["current"], ["plan"], ["downgrade", "-1"]):
        result = call(url, "migrate_schema", *args)
        first = result.stdout.splitlines()[0]
        assert first.startswith("Database: postgresql+psycopg://postgres:***@127.0.0.1"), (args, result.stdout)
        assert "hunter2" not in result.stdout + result.stderr
    preview = call(url, "migrate_schema", "upgrade", "head", "--sql")
    assert preview.stdout.lstrip().startswith("SET lock_timeout") and "Database: " in preview.stderr
    alembic = run_cli(str(Path(sys.executable).parent / "alembic"), "current", database_url=url)
    assert "Database: postgresql+psycopg://postgres:***@127.0.0.1" in alembic.stderr
    assert "hunter2" not in alembic.stdout + alembic.stderr


@pytest.fixture
def pg_db_url(make_database) -> str:
    return django_url(make_database("postgresql"))


def _record(url: sa.URL, *revisions: str) -> None:
    run_sql(url, "DELETE FROM alembic_version")
    for revision in revisions:
        run_sql(url, "INSERT INTO alembic_version (version_num) VALUES (:v)", {"v": revision})


SEVERAL = ("003_context_management", REVISIONS[-1])
UNKNOWN = ("9f3e2a1b7c4d",)


@pytest.mark.parametrize(("recorded", "message"), [(SEVERAL, "several revisions on one line of history"),
                                                   (UNKNOWN, "revision 9f3e2a1b7c4d, which this code does not know")],
                         ids=["several", "unknown"])
@pytest.mark.parametrize("args", [["current"], ["upgrade"], ["plan"], ["plan", "--json"], ["downgrade", "-1"],
                                  ["stamp", "002_voice_agent_integration"], ["check"]],
                         ids=lambda a: "-".join(a))
def test_a_database_recording_what_no_command_can_start_from_is_one_line(
        make_database, recorded: tuple[str, ...], message: str, args: list[str]) -> None:
    url = make_database("postgresql", at_head=True)
    _record(url, *recorded)
    result = call(url, "migrate_schema", *args)
    assert result.returncode == 1, result.stdout + result.stderr
    errors = error_lines(result.stderr)
    assert len(errors) == 1 and message in errors[0] and "stamp REV --purge" in errors[0], result.stderr
    assert {row[0] for row in run_sql(url, "SELECT version_num FROM alembic_version")} == set(recorded)


@pytest.mark.parametrize("recorded", [SEVERAL, UNKNOWN], ids=["several", "unknown"])
def test_stamp_purge_gets_the_operator_out(make_database, recorded: tuple[str, ...]) -> None:
    """The guide's fixes (``stamp REV``, ``UPDATE alembic_version``) fail here; ``stamp --purge`` does not."""
    url = make_database("postgresql", at_head=True)
    _record(url, *recorded)
    alembic = run_cli(str(Path(sys.executable).parent / "alembic"), "current", database_url=django_url(url))
    assert alembic.returncode != 0 and "Traceback" not in alembic.stderr and "--purge" in alembic.stdout
    result = call(url, "migrate_schema", "stamp", REVISIONS[-1], "--purge")
    assert result.returncode == 0, result.stderr
    assert f"Stamped the database as {REVISIONS[-1]}" in result.stdout
    assert run_sql(url, "SELECT version_num FROM alembic_version") == [(REVISIONS[-1],)]
    assert "Nothing to do" in call(url, "migrate_schema").stdout


@pytest.mark.parametrize("args", [["current"], ["plan"], ["plan", "--json"], ["upgrade"], ["heads"]],
                         ids=lambda a: "-".join(a))
def test_multiple_heads_are_one_line_with_the_documented_exit_code(
        make_database, scratch_migrations: Path, args: list[str]) -> None:
    url = make_database("postgresql", at_head=True)
    (scratch_migrations / "versions" / "b1_branch.py").write_text(
        '"""A branch from 003."""\nrevision = "b1_branch"\ndown_revision = "003_context_management"\n'
        "branch_labels = None\ndepends_on = None\n\n"
        "def upgrade() -> None:\n    pass\n\n\ndef downgrade() -> None:\n    pass\n")
    result = call(url, "migrate_schema", *args, ALEMBIC_SCRIPT_LOCATION=str(scratch_migrations))
    assert "Traceback" not in result.stderr
    if args == ["heads"]:
        assert result.returncode == 0 and "b1_branch (head)" in result.stdout
    elif args == ["current"]:  # where the database is, and a warning to merge
        assert result.returncode == 0 and REVISIONS[-1] in result.stdout
        assert "warning: the revision history has 2 heads" in result.stderr
    else:
        assert result.returncode == 1
        errors = error_lines(result.stderr)
        assert len(errors) == 1 and "multiple heads" in errors[0] and "merge heads" in errors[0], result.stderr


@pytest.mark.parametrize("args", [["stamp", ""], ["upgrade", ""], ["downgrade", ""], ["show", ""], ["stamp", "  "],
                                  ["merge", "heads"], ["merge", "head", "head"]],
                         ids=["stamp-empty", "upgrade-empty", "downgrade-empty", "show-empty", "stamp-blank",
                              "merge-one-head", "merge-the-same-twice"])
def test_empty_revisions_and_pointless_merges_are_refused(tmp_path: Path, args: list[str]) -> None:
    url = f"sqlite:///{tmp_path}/db.sqlite3"
    assert call(url, "migrate_schema").returncode == 0
    result = call(url, "migrate_schema", *args)
    assert result.returncode == 1
    errors = result.stderr.strip().splitlines()
    assert len(errors) == 1 and ("no revision given" in errors[0] or "nothing to merge" in errors[0]), result.stderr
    versions = Path(config.alembic_config().get_main_option("script_location")) / "versions"
    assert len(list(versions.glob("*.py"))) == len(REVISIONS), "a merge revision was written"
    assert f"{REVISIONS[-1]} (head)" in call(url, "migrate_schema", "current").stdout


@pytest.mark.parametrize("signals", [[signal.SIGINT], [signal.SIGTERM], [signal.SIGTERM, signal.SIGTERM]],
                         ids=["ctrl-c", "sigterm", "sigterm-twice"])
def test_ctrl_c_during_an_upgrade_is_one_line_and_exit_130(make_database, signals: list[signal.Signals]) -> None:
    """The revision in flight is rolled back; the operator reads which, not 126 lines of traceback.

    SIGTERM (timeout, a CI runner's cancel) the same; twice, as when the whole process group is signalled too.
    """
    url = make_database("postgresql")
    commands.upgrade(revision="002_voice_agent_integration", url=url)
    blocker = database.create_engine(url).connect()
    blocker.execute(sa.text("SELECT count(*) FROM calls"))  # holds ACCESS SHARE on calls: 003's ALTER waits
    upgrade = subprocess.Popen([sys.executable, "manage.py", "migrate_schema", "upgrade", "head"], cwd=ROOT,
                               env=cli_environment(django_url(url), MIGRATION_LOCK_TIMEOUT="10min"),
                               stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        wait_for(lambda: run_sql(url, "SELECT count(*) FROM pg_locks l JOIN pg_class c ON c.oid = l.relation "
                                      "WHERE c.relname = 'calls' AND NOT l.granted")[0][0] > 0)
        for signum in signals:
            upgrade.send_signal(signum)
        out, err = upgrade.communicate(timeout=120)
    finally:
        blocker.rollback()
        blocker.close()
        if upgrade.poll() is None:
            upgrade.kill()
    assert upgrade.returncode == 130, out + err
    assert err.strip().splitlines() == ["CommandError: interrupted; revision 003_context_management rolled back; "
                                        "the database is at 002_voice_agent_integration"]
    assert state.status(url=url).current == ("002_voice_agent_integration",)
    columns = {c["name"] for c in sa.inspect(database.create_engine(url)).get_columns("calls")}
    assert "total_context_tokens" not in columns
