"""Expand/contract (the guide's zero-downtime phases): a revision that needs a backfill finished first.

A test revision on top of the real chain makes ``conversation_history.token_count`` NOT NULL
(phase 4) and declares ``requires_backfills = ("messages",)``; ``migrate_schema`` and ``plan``
refuse it until the backfill has filled every row.
"""
from __future__ import annotations

import io
import json
from pathlib import Path

import pytest
import sqlalchemy as sa
from django.core.management import CommandError, call_command

from calls import backfill
from calls.sample_data import generate_sample_data
from schema_engine import commands, database, errors, gate, lint, state
from schema_engine import plan as deploy_plan
from tests.conftest import HEAD, ROOT, alembic_cli, run_sql

NOT_NULL_REVISION = '''"""Make conversation_history.token_count NOT NULL: phase 4, after the messages backfill.

On PostgreSQL without a blocking scan: CHECK ... NOT VALID, VALIDATE, then SET NOT NULL.
"""
import sqlalchemy as sa

from migrations_alembic import helpers

revision = "007_token_count_not_null"
down_revision = "{head}"
branch_labels = None
depends_on = None
requires_backfills = ("messages",)


def upgrade() -> None:
    helpers.set_not_null("conversation_history", "token_count", sa.Integer())


def downgrade() -> None:
    helpers.drop_not_null("conversation_history", "token_count", sa.Integer())
'''.format(head=HEAD)
REVISION = "007_token_count_not_null"


@pytest.fixture
def contract_chain(scratch_migrations: Path) -> Path:
    (scratch_migrations / "versions" / f"{REVISION}.py").write_text(NOT_NULL_REVISION)
    return scratch_migrations


def token_count_nullable(url: sa.URL) -> bool:
    engine = database.create_engine(url)
    try:
        columns = sa.inspect(engine).get_columns("conversation_history")
        return next(c for c in columns if c["name"] == "token_count")["nullable"]
    finally:
        engine.dispose()


def test_a_revision_waits_for_its_backfill(contract_chain: Path, empty_db: sa.URL) -> None:
    # From an empty database the backfill cannot have run: upgrade to the revision before, first.
    with pytest.raises(errors.BackfillRequired, match=rf"upgrade {HEAD}'.*backfill_context --only messages"):
        commands.upgrade(revision="head", url=empty_db)
    assert state.status(url=empty_db).current == ()  # refused before anything ran

    commands.upgrade(revision=HEAD, url=empty_db)
    with database.connect(empty_db) as conn:
        counts = generate_sample_data(connection=conn, calls=12, seed=2)
    with pytest.raises(errors.BackfillRequired, match=rf"{counts.messages:,} rows still need it"):
        commands.upgrade(revision="head", url=empty_db)
    assert deploy_plan.plan(url=empty_db).backfill_blockers
    assert state.status(url=empty_db).current == (HEAD,)

    backfill.backfill_context(url=empty_db, only=("messages",))
    assert deploy_plan.plan(url=empty_db).safe
    commands.upgrade(revision="head", url=empty_db)
    assert state.status(url=empty_db).current == (REVISION,)
    assert token_count_nullable(empty_db) is False
    with pytest.raises(sa.exc.IntegrityError):
        run_sql(empty_db, "INSERT INTO conversation_history (call_id, role, content) "
                          "SELECT id, 'user', 'no count' FROM calls LIMIT 1")

    commands.downgrade(revision="-1", url=empty_db)
    assert token_count_nullable(empty_db) is True


def test_not_null_uses_a_not_valid_check_then_validate_on_postgresql(contract_chain: Path) -> None:
    sql = commands.revision_sql(REVISION, HEAD, url=sa.make_url("postgresql+psycopg://offline@x/offline"))
    add = sql.index("ADD CONSTRAINT ck_conversation_history_token_count_not_null "
                    "CHECK (token_count IS NOT NULL) NOT VALID")
    validate = sql.index("VALIDATE CONSTRAINT ck_conversation_history_token_count_not_null")
    set_not_null = sql.index("ALTER COLUMN token_count SET NOT NULL")
    assert add < sql.index("COMMIT", add) < validate < set_not_null  # validated in a later transaction
    assert lint.lint_sql(sql) == []


def test_plan_is_one_exit_code_and_json(contract_chain: Path, django_database, make_database) -> None:
    url = make_database("postgresql")
    django_database(url)
    commands.upgrade(revision=HEAD, url=url)
    with database.connect(url) as conn:
        generate_sample_data(connection=conn, calls=5, seed=4)
    out = io.StringIO()
    with pytest.raises(CommandError, match=f"not safe to apply: revision {REVISION} needs the messages "
                                           "backfill finished") as refused:
        call_command("migrate_schema", "plan", "--json", stdout=out)
    assert refused.value.returncode == 3
    planned = json.loads(out.getvalue())
    assert planned["safe"] is False and planned["current"] == [HEAD]
    assert planned["pending"] == [{"revision": REVISION, "doc": planned["pending"][0]["doc"],
                                   "requires_backfills": ["messages"], "lint_findings": [],
                                   "accepted_lint_findings": [], "data_checks": []}]

    backfill.backfill_context(url=url, only=("messages",))
    out = io.StringIO()
    call_command("migrate_schema", "plan", stdout=out)
    assert f"pending {REVISION}" in out.getvalue() and "Safe to apply" in out.getvalue()

    run_sql(url, "CREATE INDEX ix_scratch ON contacts (city)")
    run_sql(url, "UPDATE pg_index SET indisvalid = false WHERE indexrelid = 'ix_scratch'::regclass")
    with pytest.raises(CommandError, match="index ix_scratch on contacts is INVALID"):
        call_command("migrate_schema", "plan", stdout=io.StringIO())


def test_the_alembic_cli_refuses_the_same_revisions(contract_chain: Path, make_database, tmp_path: Path) -> None:
    """The gate runs in env.py: ``alembic upgrade head`` waits for the backfill as ``migrate_schema`` does."""
    ini = tmp_path / "alembic.ini"  # the project's, pointing at the copy of the revisions
    ini.write_text((ROOT / "alembic.ini").read_text().replace("%(here)s/migrations_alembic", str(contract_chain)))
    url = make_database("sqlite")
    commands.upgrade(revision=HEAD, url=url)
    with database.connect(url) as conn:
        generate_sample_data(connection=conn, calls=3, seed=2)
    refused = alembic_cli(url, "-c", str(ini), "upgrade", "head", ALEMBIC_SCRIPT_LOCATION=str(contract_chain))
    assert refused.returncode != 0 and "Traceback" not in refused.stderr
    assert "needs the messages backfill finished" in refused.stdout
    assert "backfill_context --only messages" in refused.stdout
    assert state.status(url=url).current == (HEAD,)

    backfill.backfill_context(url=url, only=("messages",))
    applied = alembic_cli(url, "-c", str(ini), "upgrade", "head", ALEMBIC_SCRIPT_LOCATION=str(contract_chain))
    assert applied.returncode == 0, applied.stdout + applied.stderr
    assert state.status(url=url).current == (REVISION,)


def test_the_gate_knows_only_the_backfills_apps_register(scratch_migrations: Path, empty_db: sa.URL) -> None:
    """The engine imports no app: ``calls`` registers its backfills from AppConfig.ready()."""
    assert gate.registered() == set(backfill.BACKFILLS)
    (scratch_migrations / "versions" / "007_needs_audio.py").write_text(
        NOT_NULL_REVISION.replace('requires_backfills = ("messages",)', 'requires_backfills = ("audio",)')
        .replace('revision = "007_token_count_not_null"', 'revision = "007_needs_audio"'))
    commands.upgrade(revision=HEAD, url=empty_db)
    with pytest.raises(errors.BackfillRequired, match="needs the audio backfill, which no installed app registers"):
        commands.upgrade(revision="head", url=empty_db)
    assert state.status(url=empty_db).current == (HEAD,)
