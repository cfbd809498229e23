"""The trigger that keeps an old column and its new-typed copy in step, both ways, while both releases write.

One function per table (``_sync_<E>_<table>``), covering all its type changes, fired BEFORE
INSERT OR UPDATE. INSERT: a new column left NULL is the old one converted up, else the old one
is the new one converted down. UPDATE: a changed old column is converted up, else a changed new
one down. It stands aside while the fill writes (``FILL_SETTING`` set LOCAL to ``on``): the fill
sets the new column of old rows only, and must never write the old one.

The new column has no default until contract, so NULL tells which release wrote a row; a row the
new release inserts with the column NULL gets the old column's default (if any), converted.
"""
from __future__ import annotations

from typing import Iterable

from schema_engine.versioning.names import (
    SCHEMA,
    literal,
    physical_name,
    quoted,
    sync_function,
    sync_trigger,
    table_name,
)
from schema_engine.versioning.steps import ChangeType, Step, down_sql, of_table, up_sql

FILL_SETTING = "reautomation.fill"
FILL_SETTING_SQL = f"SET LOCAL {FILL_SETTING} = 'on'"


def _function(revision: str, table: str) -> str:
    return f"{SCHEMA}.{quoted(sync_function(revision, table))}"


def sync_function_sql(revision: str, table: str, steps: Iterable[Step]) -> str | None:
    """Return the trigger function keeping ``table``'s old and new columns in step; None if no step changes a type."""
    changes = [step for step in of_table(steps, table) if isinstance(step, ChangeType)]
    if not changes:
        return None
    blocks = []
    for step in changes:
        old, new = f"NEW.{quoted(step.column)}", f"NEW.{quoted(physical_name(revision, step.column))}"
        was_old, was_new = f"OLD.{quoted(step.column)}", f"OLD.{quoted(physical_name(revision, step.column))}"
        blocks.append(
            "    IF TG_OP = 'INSERT' THEN\n"
            f"        IF {new} IS NULL THEN\n            {new} := {up_sql(step, old)};\n"
            f"        ELSE\n            {old} := {down_sql(step, new)};\n        END IF;\n"
            f"    ELSIF {old} IS DISTINCT FROM {was_old} THEN\n        {new} := {up_sql(step, old)};\n"
            f"    ELSIF {new} IS DISTINCT FROM {was_new} THEN\n        {old} := {down_sql(step, new)};\n"
            "    END IF;")
    body = "\n".join(blocks)
    return (f"CREATE OR REPLACE FUNCTION {_function(revision, table)}() RETURNS trigger LANGUAGE plpgsql AS $sync$\n"
            "BEGIN\n"
            f"    IF current_setting({literal(FILL_SETTING)}, true) = 'on' THEN\n        RETURN NEW;\n    END IF;\n"
            f"{body}\n    RETURN NEW;\nEND\n$sync$")


def sync_trigger_sql(revision: str, table: str) -> list[str]:
    """Return the SQL (re)creating expand ``revision``'s trigger on ``table``."""
    trigger = quoted(sync_trigger(revision))
    return [f"DROP TRIGGER IF EXISTS {trigger} ON {table_name(table)}",
            f"CREATE TRIGGER {trigger} BEFORE INSERT OR UPDATE ON {table_name(table)} "
            f"FOR EACH ROW EXECUTE FUNCTION {_function(revision, table)}()"]


def drop_sync_sql(revision: str, table: str) -> list[str]:
    """Return the SQL dropping expand ``revision``'s trigger on ``table`` and its function."""
    return [f"DROP TRIGGER IF EXISTS {quoted(sync_trigger(revision))} ON {table_name(table)}",
            f"DROP FUNCTION IF EXISTS {_function(revision, table)}()"]
