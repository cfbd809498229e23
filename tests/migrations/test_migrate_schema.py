"""``manage.py migrate_schema`` and the plain ``alembic`` CLI, as operators and deploy scripts use them."""
from __future__ import annotations

import io
import os
import subprocess
import sys
from pathlib import Path

import pytest
import sqlalchemy as sa
from django.core.management import CommandError, call_command

from reautomation import schema
from tests.conftest import django_url, run_sql
from tests.migrations.conftest import REVISIONS

ROOT = Path(schema.__file__).resolve().parent.parent


def migrate_schema(*args: str) -> str:
    out = io.StringIO()
    call_command("migrate_schema", *args, stdout=out)
    return out.getvalue()


def cli_environment(database_url: str, **env: str) -> dict[str, str]:
    """The environment of a command run by an operator against ``database_url``."""
    return {**os.environ, "DATABASE_URL": database_url, "SECRET_KEY": "cli-test",
            "DJANGO_SETTINGS_MODULE": "reautomation.settings", **env}


def run_cli(*args: str, database_url: str, **env: str) -> subprocess.CompletedProcess[str]:
    """Run a command-line tool from the repository root, as an operator would."""
    return subprocess.run(args, cwd=ROOT, env=cli_environment(database_url, **env), capture_output=True, text=True,
                          timeout=120)


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
    assert schema.status(url=on_db).pending[0][0] == "003_context_management"


def test_sql_preview_starts_from_the_current_revision_and_changes_nothing(on_db: sa.URL) -> None:
    migrate_schema("upgrade", "002_voice_agent_integration")
    preview = migrate_schema("upgrade", "head", "--sql")
    assert "context_pruned" in preview and "ix_calls_created_at_covering" in preview
    assert "CREATE TABLE contacts" not in preview  # already applied: not in the preview
    if on_db.get_backend_name() == "postgresql":
        assert "CREATE INDEX CONCURRENTLY ix_calls_created_at_covering ON calls (created_at) INCLUDE (status, tier, total_cost)" in preview
    assert schema.status(url=on_db).current == ("002_voice_agent_integration",)
    if on_db.get_backend_name() == "sqlite":
        with pytest.raises(CommandError, match="--sql cannot render this step on SQLite"):
            migrate_schema("downgrade", "001_langsmith_monitoring", "--sql")
    else:
        rollback = migrate_schema("downgrade", "001_langsmith_monitoring", "--sql")
        assert "DROP TABLE agent_transitions" in rollback
    assert schema.status(url=on_db).current == ("002_voice_agent_integration",)


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
    assert schema.status(url=on_db).at_head


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
def test_bad_input_is_one_line_and_a_nonzero_exit(tmp_path: Path, args: list[str], url: str | None, message: str) -> None:
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
    assert run_cli(sys.executable, "manage.py", "migrate_schema", "upgrade", "003_context_management",
                   database_url=url).returncode == 0
    current = run_cli(alembic, "current", database_url=url)
    assert current.returncode == 0 and "003_context_management" in current.stdout
    assert run_cli(alembic, "upgrade", "head", database_url=url).returncode == 0
    assert f"{REVISIONS[-1]} (head)" in run_cli(
        sys.executable, "manage.py", "migrate_schema", "current", database_url=url).stdout
    failed = run_cli(alembic, "upgrade", "nope", database_url=url)
    assert failed.returncode != 0 and "Traceback" not in failed.stderr
    assert "FAILED: Can't locate revision identified by 'nope'" in failed.stdout
