"""``revision --autogenerate`` writes revisions that ``plan`` accepts unchanged: concurrent indexes, expand/contract,
archived columns, CHECK constraints added NOT VALID."""
from __future__ import annotations

import re
from pathlib import Path

import pytest
import sqlalchemy as sa
from django.db import models
from django.db.models import Q
from sqlalchemy.dialects import postgresql

from calls.models import Call, ConversationMessage
from schema_engine import autogenerate, checksums, commands, errors, plan
from tests.conftest import HEAD, inspected, run_sql


def written(migrations: Path, revision: str) -> str:
    (path,) = (migrations / "versions").glob(f"{revision}_*.py")
    return path.read_text()


def columns(url: sa.URL) -> dict[str, bool]:
    with inspected(url) as inspector:
        return {c["name"]: c["nullable"] for c in inspector.get_columns("calls")}


def test_the_guides_new_indexed_field_is_generated_deployable(
        head_db: sa.URL, priority_field: models.Field, scratch_migrations: Path) -> None:
    """The guide's "Adding New Fields": change the model, autogenerate, and plan says safe as it is."""
    (revision,) = commands.create_revision(message="add_scratch_priority_to_calls", autogenerate=True, url=head_db)
    text = written(scratch_migrations, revision)
    # op.add_column('calls', ...) on PostgreSQL; batch_op.add_column(...) inside batch_alter_table on SQLite.
    assert re.search(r"add_column\((?:'calls', )?sa\.Column\('scratch_priority', sa\.Integer\(\), "
                     r"server_default=sa\.text\('0'\), nullable=False\)\)", text)
    assert ("    with op.get_context().autocommit_block():\n"
            "        build_index('ix_calls_scratch_priority', 'calls', ['scratch_priority'])\n") in text
    assert ("    with op.get_context().autocommit_block():\n"
            "        drop_index('ix_calls_scratch_priority', 'calls')\n") in text
    assert "from migrations_alembic.helpers import build_index" in text
    assert "- ix_calls_scratch_priority on calls: which query does it serve? Quote it here" in text.split('"""')[1]
    assert "create_index(" not in text and "op.drop_index(" not in text

    planned = plan.plan(url=head_db)
    assert planned.safe, planned.problems
    assert [rev.revision for rev in planned.pending] == [revision]
    commands.upgrade(revision="head", url=head_db)
    commands.check(url=head_db)
    commands.downgrade(revision="-1", url=head_db)
    assert "scratch_priority" not in columns(head_db)


def test_a_required_column_on_an_existing_table_is_generated_as_expand_and_contract(
        pg_head_db: sa.URL, region_field: models.Field, scratch_migrations: Path) -> None:
    expand, contract = commands.create_revision(message="add_scratch_region", autogenerate=True, url=pg_head_db)
    assert "sa.Column('scratch_region', sa.String(length=8), nullable=True)" in written(scratch_migrations, expand)
    contract_text = written(scratch_migrations, contract)
    assert f"down_revision: str | Sequence[str] | None = '{expand}'" in contract_text
    assert "    set_not_null('calls', 'scratch_region', sa.String(length=8))\n" in contract_text
    assert "    drop_not_null('calls', 'scratch_region', sa.String(length=8))\n" in contract_text
    assert ("DATA_CHECKS = {\n    'no NULL in calls.scratch_region': "
            "'SELECT id FROM calls WHERE scratch_region IS NULL ORDER BY id',\n}"
            in contract_text)

    run_sql(pg_head_db, "INSERT INTO calls (phone_number) VALUES ('+15550000001')")
    planned = plan.plan(url=pg_head_db)
    assert planned.safe, planned.problems
    assert planned.pending[1].data_checks[0].status == "deferred"

    with pytest.raises(errors.DataCheckFailed,
                       match=r"no NULL in calls\.scratch_region\" found rows it forbids, e\.g\. \(1,\)"):
        commands.upgrade(revision="head", url=pg_head_db)
    assert commands.upgrade(revision=expand, url=pg_head_db).current == (expand,)  # the expand step stayed applied
    assert columns(pg_head_db)["scratch_region"] is True

    run_sql(pg_head_db, "UPDATE calls SET scratch_region = 'us-east'")  # the data step between
    assert commands.upgrade(revision="head", url=pg_head_db).current == (contract,)
    assert columns(pg_head_db)["scratch_region"] is False
    commands.check(url=pg_head_db)
    commands.downgrade(revision=HEAD, url=pg_head_db)
    assert "scratch_region" not in columns(pg_head_db)


def test_autogenerate_without_changes_writes_nothing(head_db: sa.URL, scratch_migrations: Path) -> None:
    before = sorted((scratch_migrations / "versions").glob("*.py"))
    assert commands.create_revision(message="nothing", autogenerate=True, url=head_db) == ()
    assert sorted((scratch_migrations / "versions").glob("*.py")) == before


@pytest.fixture
def pruning_count_check(monkeypatch: pytest.MonkeyPatch) -> models.CheckConstraint:
    """A CHECK constraint added to ``Call``, on a column that holds data already."""
    constraint = models.CheckConstraint(condition=Q(pruning_count__gte=0), name="ck_calls_pruning_count_non_negative")
    monkeypatch.setattr(Call._meta, "constraints", [*Call._meta.constraints, constraint])
    return constraint


@pytest.fixture
def without_role_check(monkeypatch: pytest.MonkeyPatch) -> None:
    """``ConversationMessage`` without its CHECK constraint on ``role``."""
    monkeypatch.setattr(ConversationMessage._meta, "constraints", [])


def tables(url: sa.URL) -> set[str]:
    with inspected(url) as inspector:
        return set(inspector.get_table_names())


def test_a_downgrade_keeps_the_values_of_the_columns_an_autogenerated_revision_added(
        head_db: sa.URL, priority_field: models.Field, scratch_migrations: Path) -> None:
    """The guide's ``priority`` example: set to 5, downgraded, upgraded again: 5, not the default 0."""
    (revision,) = commands.create_revision(message="add_scratch_priority_to_calls", autogenerate=True, url=head_db)
    text = written(scratch_migrations, revision)
    column = "[sa.Column('scratch_priority', sa.Integer(), server_default=sa.text('0'), nullable=False)]"
    archive = f"archive_{revision}_calls"
    assert f"    archive_columns('calls', {column}, archive='{archive}', where='scratch_priority <> 0')\n" in text
    assert f"    restore_columns('calls', {column}, archive='{archive}')\n" in text
    assert (f"- Downgrade keeps the values of calls.scratch_priority in {archive}; "
            "the next upgrade restores them.") in text

    commands.upgrade(revision="head", url=head_db)
    run_sql(head_db, "INSERT INTO calls (phone_number) VALUES ('+15550000001'), ('+15550000002'), ('+15550000003')")
    run_sql(head_db, "UPDATE calls SET scratch_priority = 5 WHERE phone_number <> '+15550000003'")
    commands.downgrade(revision="-1", url=head_db)
    assert "scratch_priority" not in columns(head_db)
    assert archive in tables(head_db)

    commands.upgrade(revision="head", url=head_db)
    assert run_sql(head_db, "SELECT phone_number, scratch_priority FROM calls ORDER BY id") == [
        ("+15550000001", 5), ("+15550000002", 5), ("+15550000003", 0)]
    assert archive not in tables(head_db)
    commands.check(url=head_db)
    assert not [c.revision for c in checksums.verify(url=head_db) if c.changed]


def test_an_upgrade_keeps_the_values_of_a_column_the_models_no_longer_have(
        head_db: sa.URL, scratch_migrations: Path) -> None:
    run_sql(head_db, "ALTER TABLE call_notes ADD COLUMN reviewed_by VARCHAR(40)")  # a field since removed
    run_sql(head_db, "INSERT INTO calls (id, phone_number) VALUES (1, '+15550000001')")
    run_sql(head_db, "INSERT INTO call_notes (call_id, body, reviewed_by) VALUES (1, 'a', 'ops'), (1, 'b', NULL)")
    (revision,) = commands.create_revision(message="remove reviewed_by", autogenerate=True, url=head_db)
    text = written(scratch_migrations, revision)
    archive = f"archive_{revision}_upgrade_call_notes"
    upgrade, downgrade = text.split("def upgrade() -> None:")[1].split("def downgrade() -> None:")
    assert re.search(rf"archive_columns\('call_notes', \[sa\.Column\('reviewed_by', sa\.VARCHAR\(length=40\), "
                     rf"(autoincrement=False, )?nullable=True\)\], archive='{archive}', "
                     r"where='reviewed_by IS NOT NULL'\)", upgrade)
    assert upgrade.index("archive_columns(") < upgrade.index("drop_column(")
    assert downgrade.index("add_column(") < downgrade.index("restore_columns('call_notes', [sa.Column('reviewed_by'")
    if head_db.get_backend_name() == "postgresql":  # dropping a column stays the developer's call to accept
        assert {problem.split(": squawk: ")[1].split(":")[0] for problem in plan.plan(url=head_db).problems} == {
            "ban-drop-column"}

    commands.upgrade(revision="head", url=head_db)
    assert run_sql(head_db, f"SELECT reviewed_by FROM {archive}") == [("ops",)]
    commands.check(url=head_db)
    commands.downgrade(revision="-1", url=head_db)
    assert run_sql(head_db, "SELECT body, reviewed_by FROM call_notes ORDER BY id") == [("a", "ops"), ("b", None)]
    assert archive not in tables(head_db)


def test_a_check_constraint_added_to_a_model_is_generated_not_valid_then_validated(
        head_db: sa.URL, pruning_count_check: models.CheckConstraint, scratch_migrations: Path) -> None:
    (revision,) = commands.create_revision(message="pruning count non negative", autogenerate=True, url=head_db)
    text = written(scratch_migrations, revision)
    name = "ck_calls_pruning_count_non_negative"
    assert f"    add_check_constraint('{name}', 'calls', '\"pruning_count\" >= 0')\n" in text.split("def downgrade")[0]
    assert f"    drop_check_constraint('{name}', 'calls')\n" in text.split("def downgrade")[1]
    assert (f"DATA_CHECKS = {{\n    'every row of calls satisfies {name}': "
            "'SELECT id FROM calls WHERE NOT (\"pruning_count\" >= 0) ORDER BY id',\n}") in text
    assert "create_check_constraint(" not in text

    run_sql(head_db, "INSERT INTO calls (id, phone_number, pruning_count) VALUES (1, '+15550000001', -1)")
    if head_db.get_backend_name() == "postgresql":
        planned = plan.plan(url=head_db)
        assert [problem for problem in planned.problems if "squawk" in problem] == []
    with pytest.raises(errors.DataCheckFailed, match=name):
        commands.upgrade(revision="head", url=head_db)
    run_sql(head_db, "UPDATE calls SET pruning_count = 0")
    commands.upgrade(revision="head", url=head_db)
    commands.check(url=head_db)
    if head_db.get_backend_name() == "postgresql":
        assert run_sql(head_db, "SELECT convalidated FROM pg_constraint WHERE conname = :name", {"name": name}) == [
            (True,)]
    with pytest.raises(sa.exc.IntegrityError, match=name):
        run_sql(head_db, "UPDATE calls SET pruning_count = -1")
    commands.downgrade(revision="-1", url=head_db)
    run_sql(head_db, "UPDATE calls SET pruning_count = -1")


def test_a_check_constraint_removed_from_a_model_is_dropped_and_its_downgrade_adds_it_back(
        head_db: sa.URL, without_role_check: None, scratch_migrations: Path) -> None:
    (revision,) = commands.create_revision(message="any role", autogenerate=True, url=head_db)
    text = written(scratch_migrations, revision)
    upgrade, downgrade = text.split("def upgrade() -> None:")[1].split("def downgrade() -> None:")
    assert "    drop_check_constraint('ck_conversation_history_role', 'conversation_history')\n" in upgrade
    assert "    add_check_constraint('ck_conversation_history_role', 'conversation_history', " in downgrade
    insert = "INSERT INTO conversation_history (call_id, role, content) VALUES (1, 'robot', 'beep')"

    run_sql(head_db, "INSERT INTO calls (id, phone_number) VALUES (1, '+15550000001')")
    commands.upgrade(revision="head", url=head_db)
    commands.check(url=head_db)
    run_sql(head_db, insert)
    run_sql(head_db, "DELETE FROM conversation_history")
    commands.downgrade(revision="-1", url=head_db)
    with pytest.raises(sa.exc.IntegrityError, match="ck_conversation_history_role"):
        run_sql(head_db, insert)


@pytest.mark.parametrize(
    ("column", "where"),
    [
        (sa.Column("priority", sa.Integer(), server_default=sa.text("0"), nullable=False), "priority <> 0"),
        (sa.Column("region", sa.String(8), server_default=sa.text("'us'::character varying"), nullable=True),
         "region IS NULL OR region <> 'us'::character varying"),
        (sa.Column("flagged", sa.Boolean(), server_default=sa.false(), nullable=False), "flagged <> false"),
        (sa.Column("reviewed_by", sa.String(40), nullable=True), "reviewed_by IS NOT NULL"),
        (sa.Column("seen_at", sa.DateTime(), server_default=sa.func.now(), nullable=True),
         "seen_at IS NULL OR seen_at IS NOT NULL"),
    ],
)
def test_a_downgrade_archives_the_rows_a_readded_column_would_not_give_back(column: sa.Column, where: str) -> None:
    assert autogenerate.changed_by_readding(column, postgresql.dialect()) == where
