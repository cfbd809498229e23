"""The models are the one description of the schema: a test fails when they and the revisions drift."""
from __future__ import annotations

import pytest
import sqlalchemy as sa
from django.db import models
from django.db.models import Q
from sqlalchemy.dialects import postgresql, sqlite

from calls.models import Call
from schema_engine import commands, errors, metadata
from tests.conftest import run_sql


def test_check_is_quiet_at_head(head_db: sa.URL) -> None:
    commands.check(url=head_db)


def test_check_is_loud_after_a_model_change(head_db: sa.URL, priority_field: models.Field) -> None:
    with pytest.raises(errors.SchemaDrift, match="scratch_priority.*revision --autogenerate") as caught:
        commands.check(url=head_db)
    assert any("scratch_priority" in repr(diff) for diff in caught.value.diffs)


@pytest.mark.parametrize(
    "change",
    [
        "DROP INDEX ix_calls_tier_created_at",
        "CREATE INDEX ix_calls_outcome ON calls (outcome)",
        "ALTER TABLE call_notes ADD COLUMN reviewed BOOLEAN",
    ],
)
def test_check_is_loud_when_the_database_drifts(head_db: sa.URL, change: str) -> None:
    run_sql(head_db, change)
    with pytest.raises(errors.SchemaDrift):
        commands.check(url=head_db)


@pytest.mark.parametrize("dialect", ["postgresql", "sqlite"])
def test_some_tables_of_the_metadata_are_those_of_the_whole(dialect: str) -> None:
    # The backfill builds only its run tables: they must be what the whole schema holds.
    sql_dialect = {"postgresql": postgresql.dialect, "sqlite": sqlite.dialect}[dialect]()

    def ddl(table: sa.Table) -> list[str]:
        return [str(sa.schema.CreateTable(table).compile(dialect=sql_dialect)),
                *sorted(str(sa.schema.CreateIndex(index).compile(dialect=sql_dialect)) for index in table.indexes)]

    whole = metadata.build_metadata(dialect).tables
    some = metadata.build_metadata(dialect, tables={"backfill_runs", "backfill_batches"}).tables
    assert sorted(some) == ["backfill_batches", "backfill_runs"]
    assert {name: ddl(table) for name, table in some.items()} == {name: ddl(whole[name]) for name in some}


@pytest.fixture
def pruning_count_check(monkeypatch: pytest.MonkeyPatch) -> models.CheckConstraint:
    """A CHECK constraint added to ``Call`` (Django 5.2: ``condition=``)."""
    constraint = models.CheckConstraint(condition=Q(pruning_count__gte=0), name="ck_calls_pruning_count_non_negative")
    monkeypatch.setattr(Call._meta, "constraints", [*Call._meta.constraints, constraint])
    return constraint


@pytest.mark.parametrize("dialect", ["postgresql", "sqlite"])
def test_a_check_constraint_of_a_model_is_a_named_check_constraint_in_the_dialects_sql(
        dialect: str, pruning_count_check: models.CheckConstraint) -> None:
    calls = metadata.build_metadata(dialect, tables={"calls"}).tables["calls"]
    (check,) = [c for c in calls.constraints if isinstance(c, sa.CheckConstraint)]
    assert (check.name, str(check.sqltext)) == ("ck_calls_pruning_count_non_negative", '"pruning_count" >= 0')


def test_check_is_loud_when_a_model_gains_a_check_constraint(
        head_db: sa.URL, pruning_count_check: models.CheckConstraint) -> None:
    with pytest.raises(errors.SchemaDrift, match="add_constraint ck_calls_pruning_count_non_negative"):
        commands.check(url=head_db)


@pytest.mark.parametrize(
    ("change", "found"),
    [
        ("ALTER TABLE calls ADD CONSTRAINT ck_calls_short_summary CHECK (length(summary) < 2000)",
         "remove_constraint ck_calls_short_summary"),
        ("ALTER TABLE conversation_history DROP CONSTRAINT ck_conversation_history_role",
         "add_constraint ck_conversation_history_role"),
    ],
)
def test_check_is_loud_when_the_databases_check_constraints_drift(pg_head_db: sa.URL, change: str, found: str) -> None:
    run_sql(pg_head_db, change)
    with pytest.raises(errors.SchemaDrift, match=found):
        commands.check(url=pg_head_db)


def test_check_ignores_the_not_null_checks_set_not_null_leaves(pg_head_db: sa.URL) -> None:
    # helpers.set_not_null keeps its validated CHECK (column IS NOT NULL) beside the NOT NULL.
    run_sql(pg_head_db, "ALTER TABLE calls ADD CONSTRAINT ck_calls_phone_number_not_null "
                        "CHECK (phone_number IS NOT NULL)")
    commands.check(url=pg_head_db)
