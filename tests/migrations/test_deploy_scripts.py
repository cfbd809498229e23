"""``scripts/deploy`` and ``scripts/rollback`` end to end against PostgreSQL, as an operator runs them."""
from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
import sqlalchemy as sa

from calls.sample_data import generate_sample_data
from reautomation import schema
from tests.conftest import django_url, run_sql
from tests.migrations.conftest import REVISIONS
from tests.migrations.test_migrate_schema import cli_environment

ROOT = Path(__file__).resolve().parents[2]
pytestmark = pytest.mark.postgres


def script(name: str, url: sa.URL | str, *args: str, backups: Path) -> subprocess.CompletedProcess[str]:
    env = cli_environment(url if isinstance(url, str) else django_url(url), ENV_FILE="/dev/null",
                          BACKUP_DIR=str(backups), PYTHON=sys.executable)
    return subprocess.run(["bash", str(ROOT / "scripts" / name), *args], cwd=ROOT, env=env, capture_output=True,
                          text=True, timeout=300)


def counts(url: sa.URL) -> tuple[int, int]:
    return run_sql(url, "SELECT (SELECT count(*) FROM calls), (SELECT count(*) FROM conversation_history)")[0]


def test_deploy_then_rollback_with_restore(make_database, tmp_path: Path) -> None:
    url = make_database("postgresql")
    schema.upgrade(revision="003_context_management", url=url)
    with schema.connect(url) as conn:
        generate_sample_data(connection=conn, calls=30, seed=9)
    before = counts(url)

    deployed = script("deploy", url, backups=tmp_path)
    assert deployed.returncode == 0, deployed.stdout + deployed.stderr
    for number in range(1, 7):
        assert f"==> step {number}:" in deployed.stdout
    assert schema.status(url=url).current == (REVISIONS[-1],)
    assert run_sql(url, "SELECT count(*) FROM conversation_history WHERE token_count IS NULL")[0][0] == 0
    (dump,) = tmp_path.glob("*-at-003_context_management-*.dump")
    (preview,) = tmp_path.glob("migration_preview_*.sql")
    assert "CREATE INDEX CONCURRENTLY" in preview.read_text()
    assert f"To restore it: pg_restore" in deployed.stdout

    rolled_back = script("rollback", url, "003_context_management", "--restore", str(dump), backups=tmp_path)
    assert rolled_back.returncode == 0, rolled_back.stdout + rolled_back.stderr
    assert schema.status(url=url).current == ("003_context_management",)
    assert counts(url) == before
    # The backup was taken before the backfill: restored, the counts are unfilled again.
    assert run_sql(url, "SELECT count(*) FROM conversation_history WHERE token_count IS NOT NULL")[0][0] == 0


def test_deploy_stops_at_the_plan_when_it_is_not_safe(make_database, tmp_path: Path) -> None:
    url = make_database("postgresql")
    schema.upgrade(revision="004_performance_indexes", url=url)
    run_sql(url, "CREATE INDEX ix_leftover ON contacts (city)")
    run_sql(url, "UPDATE pg_index SET indisvalid = false WHERE indexrelid = 'ix_leftover'::regclass")
    result = script("deploy", url, backups=tmp_path)
    assert result.returncode == 1
    assert "deploy: step 2 (plan" in result.stderr and "ix_leftover" in result.stderr
    assert "==> step 3" not in result.stdout and list(tmp_path.iterdir()) == []
    assert schema.status(url=url).current == ("004_performance_indexes",)


def test_deploy_against_a_dead_database_stops_at_step_one(tmp_path: Path) -> None:
    result = script("deploy", "postgresql://postgres:secret@127.0.0.1:1/none", backups=tmp_path)
    assert result.returncode == 1
    assert "deploy: step 1 (check current state) failed" in result.stderr
    assert "cannot connect to the database" in result.stderr and "secret" not in result.stderr + result.stdout


def test_rollback_with_a_missing_backup_stops_at_the_restore(make_database, tmp_path: Path) -> None:
    url = make_database("postgresql")
    schema.upgrade(revision="head", url=url)
    result = script("rollback", url, "--restore", str(tmp_path / "nope.dump"), backups=tmp_path)
    assert result.returncode == 1
    assert "rollback: step 3 (restore" in result.stderr and "no backup file at" in result.stderr
    assert "==> step 4" not in result.stdout
