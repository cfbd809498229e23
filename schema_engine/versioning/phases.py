"""The physical changes of each phase on PostgreSQL: what expand adds, what contract removes, and their undos.

What only the database can tell (whether a column is there, was NOT NULL, had a default) is
decided by the SQL as it runs (``DO`` blocks reading the catalog and ``schema_versions``), so a
phase run again after it committed part-way (an autocommit block) changes nothing twice, and
``--sql`` shows what runs. A NOT NULL is set as ``helpers.set_not_null`` sets it: a CHECK added
NOT VALID (instant), then, in an autocommit block, VALIDATE (writes go on) and SET NOT NULL.
"""
from __future__ import annotations

import json
from typing import Iterable

from schema_engine.versioning.bookkeeping import column_fact
from schema_engine.versioning.names import (
    SCHEMA,
    VERSIONS,
    VERSIONS_TABLE,
    archive_name,
    do_block,
    literal,
    not_null_check,
    physical_name,
    quoted,
    table_name,
)
from schema_engine.versioning.steps import (
    ChangeType,
    DropColumn,
    RenameColumn,
    Step,
    changed_tables,
    down_sql,
    of_table,
    removed_columns,
    up_sql,
)


def has_column_sql(table: str, column: str) -> str:
    """Return the SQL condition: ``table`` has ``column``."""
    return (f"EXISTS (SELECT 1 FROM pg_attribute WHERE attrelid = {literal(table_name(table))}::regclass "
            f"AND attname = {literal(column)} AND attnum > 0 AND NOT attisdropped)")


def _has_check(table: str, check: str) -> str:
    return (f"EXISTS (SELECT 1 FROM pg_constraint WHERE conname = {literal(check)} "
            f"AND conrelid = {literal(table_name(table))}::regclass)")


def _raise(message: str) -> str:
    return f"RAISE EXCEPTION '%', {literal(message)};"


# --- expand ------------------------------------------------------------------------------------------

def refuse_unfit_sql(revision: str, steps: Iterable[Step]) -> str:
    """Return a DO block that stops expand ``revision`` with one line if the tables are not as its steps expect.

    Refused: a column to change or remove that is not there, a rename onto a name taken, a table
    that another expand changed with no contract since (one version in flight per table).
    """
    steps = tuple(steps)
    checks = []
    for step in steps:
        column = step.old if isinstance(step, RenameColumn) else step.column
        checks.append(f"    IF NOT {has_column_sql(step.table, column)} THEN\n"
                      f"        {_raise(f'expand {revision}: {step.table}.{column} does not exist')}\n    END IF;")
        if isinstance(step, RenameColumn):
            checks.append(f"    IF {has_column_sql(step.table, step.new)} THEN\n"
                          f"        {_raise(f'expand {revision}: {step.table}.{step.new} exists already')}\n"
                          "    END IF;")
    for table in changed_tables(steps):
        checks.append(
            f"    SELECT string_agg(revision, ', ') INTO other FROM {VERSIONS} WHERE contracted_at IS NULL\n"
            f"        AND revision <> {literal(revision)}\n"
            f"        AND steps @> {literal(json.dumps([{'table': table}]))}::jsonb;\n"
            "    IF other IS NOT NULL THEN\n"
            f"        RAISE EXCEPTION 'expand {revision} changes {table}, which expand % changed with no contract "
            "since: contract it first', other;\n"
            "    END IF;")
    return do_block("refuse", "\n".join(checks), "other text")


def add_column_sql(revision: str, step: ChangeType) -> str:
    """Return the SQL adding ``step``'s new-typed column: nullable and without a default, so instant.

    No default until contract: the trigger tells which release wrote a row by the column it left
    NULL, and a default would fill that one (``contract_table_sql`` sets the old default, converted).
    """
    new = quoted(physical_name(revision, step.column))
    return f"ALTER TABLE {table_name(step.table)} ADD COLUMN {new} {step.pg_type}"


def drop_new_column_sql(revision: str, step: ChangeType) -> str:
    """Return the SQL dropping ``step``'s new-typed column (undoing expand: its values are the old ones, converted)."""
    return (f"ALTER TABLE {table_name(step.table)} DROP COLUMN IF EXISTS "
            f"{quoted(physical_name(revision, step.column))}")


def null_rows_sql(table: str, column: str) -> str:
    """Return the SQL counting the rows of ``table`` without a value in ``column``."""
    return f"SELECT count(*) FROM {table_name(table)} WHERE {quoted(column)} IS NULL"


def none_null_sql(table: str, column: str) -> str:
    """Return the SQL condition: every row of ``table`` has a value in ``column`` (a scan: not under a lock)."""
    return f"NOT EXISTS (SELECT 1 FROM {table_name(table)} WHERE {quoted(column)} IS NULL)"


def allow_null_sql(revision: str, step: DropColumn) -> str:
    """Return a DO block letting the new release's inserts leave ``step``'s column out.

    Only a NOT NULL column without a default needs it (and the CHECK ``helpers.set_not_null`` left).
    """
    table, column = table_name(step.table), quoted(step.column)
    return do_block(
        "allow",
        f"    IF {column_fact(revision, step.table, step.column, 'not_null')}::boolean\n"
        f"       AND {column_fact(revision, step.table, step.column, 'default')} IS NULL THEN\n"
        f"        ALTER TABLE {table} DROP CONSTRAINT IF EXISTS {quoted(not_null_check(step.table, step.column))};\n"
        f"        ALTER TABLE {table} ALTER COLUMN {column} DROP NOT NULL;\n"
        "    END IF;")


# --- NOT NULL, when the database says so -------------------------------------------------------------

def add_not_null_check_sql(table: str, column: str, *, when: str) -> str:
    """Return a DO block adding ``CHECK (column IS NOT NULL) NOT VALID`` (instant) if ``when`` holds and it is missing.

    ``validate_not_null_sql``, after a commit, finishes it.
    """
    check = not_null_check(table, column)
    return do_block(
        "check",
        f"    IF ({when}) AND NOT {_has_check(table, check)} THEN\n"
        f"        ALTER TABLE {table_name(table)} ADD CONSTRAINT {quoted(check)} CHECK ({quoted(column)} IS NOT NULL) "
        "NOT VALID;\n"
        "    END IF;")


def validate_not_null_sql(table: str, column: str) -> str:
    """Return a DO block that, if ``add_not_null_check_sql`` added its check, validates it and sets NOT NULL.

    For an autocommit block: VALIDATE scans under SHARE UPDATE EXCLUSIVE (writes go on), then SET
    NOT NULL trusts the valid check and skips its scan.
    """
    check = not_null_check(table, column)
    return do_block(
        "validate",
        f"    IF {_has_check(table, check)} THEN\n"
        f"        ALTER TABLE {table_name(table)} VALIDATE CONSTRAINT {quoted(check)};\n"
        f"        ALTER TABLE {table_name(table)} ALTER COLUMN {quoted(column)} SET NOT NULL;\n"
        "    END IF;")


def _drop_not_null(table: str, column: str) -> str:
    check = quoted(not_null_check(table, column))
    return (f"        ALTER TABLE {table_name(table)} DROP CONSTRAINT IF EXISTS {check};\n"
            f"        ALTER TABLE {table_name(table)} ALTER COLUMN {quoted(column)} DROP NOT NULL;\n")


# --- contract ----------------------------------------------------------------------------------------

def archive_sql(contract_revision: str, table: str, steps: Iterable[Step]) -> str | None:
    """Return a DO block keeping ``table``'s removed columns in the contract's archive, by id: every row, NULLs too.

    Every row: the undo re-adds a column with its default, which rows written after the contract
    keep, while the rows the archive lists get back exactly what they held (NULL included).

    ``CREATE TABLE AS`` keeps each column's own type; an archive with no row is dropped. Nothing
    is archived once the columns are gone (a contract run again after it committed part-way).
    None if the steps remove no column of ``table``.
    """
    columns = removed_columns(steps, table)
    if not columns:
        return None
    archive = f"{SCHEMA}.{quoted(archive_name(contract_revision, table))}"
    present = " AND ".join(has_column_sql(table, column) for column in columns)
    return do_block(
        "archive",
        f"    IF {present} AND to_regclass({literal(archive)}) IS NULL THEN\n"
        f"        CREATE TABLE {archive} AS SELECT id, {', '.join(quoted(c) for c in columns)}\n"
        f"            FROM {table_name(table)};\n"
        f"        IF NOT EXISTS (SELECT 1 FROM {archive}) THEN\n"
        f"            DROP TABLE {archive};\n"
        "        END IF;\n"
        "    END IF;")


def _set_converted_default(revision: str, step: ChangeType) -> str:
    """Return PL/pgSQL giving ``step``'s column the old column's default (as expand recorded it), converted up."""
    # up() with the default in place of the column, as a PL/pgSQL text expression: up()'s own text
    # quoted, the default (known only when it runs) between its pieces.
    pieces = [literal(piece) for piece in up_sql(step, "\x00").split("\x00")]
    converted = " || '(' || old_default || ')' || ".join(pieces)
    return (f"        old_default := {column_fact(revision, step.table, step.column, 'default')};\n"
            "        IF old_default IS NOT NULL THEN\n"
            f"            EXECUTE 'ALTER TABLE {table_name(step.table)} ALTER COLUMN {quoted(step.column)} "
            f"SET DEFAULT ' || {converted};\n"
            "        END IF;\n")


def contract_table_sql(revision: str, table: str, steps: Iterable[Step]) -> str:
    """Return a DO block removing ``table``'s old shape: old columns dropped, new ones renamed to their names.

    A type-changed column's new copy takes the old column's name, its NOT NULL check's name and
    its default, converted. Each change only while its old shape is there, so a contract run again
    changes nothing twice (and never drops a new column that has the old name by then).
    """
    table_sql, lines = table_name(table), []
    for step in of_table(steps, table):
        if isinstance(step, RenameColumn):
            lines.append(f"    IF {has_column_sql(table, step.old)} THEN\n"
                         f"        ALTER TABLE {table_sql} RENAME COLUMN {quoted(step.old)} TO {quoted(step.new)};\n"
                         "    END IF;")
        elif isinstance(step, ChangeType):
            new = physical_name(revision, step.column)
            check = not_null_check(table, new)
            lines.append(
                f"    IF {has_column_sql(table, new)} THEN\n"
                f"        ALTER TABLE {table_sql} DROP COLUMN {quoted(step.column)};\n"
                f"        ALTER TABLE {table_sql} RENAME COLUMN {quoted(new)} TO {quoted(step.column)};\n"
                f"        IF {_has_check(table, check)} THEN\n"
                f"            ALTER TABLE {table_sql} RENAME CONSTRAINT {quoted(check)} "
                f"TO {quoted(not_null_check(table, step.column))};\n"
                "        END IF;\n"
                f"{_set_converted_default(revision, step)}"
                "    END IF;")
        else:
            lines.append(f"    IF {has_column_sql(table, step.column)} THEN\n"
                         f"        ALTER TABLE {table_sql} DROP COLUMN {quoted(step.column)};\n"
                         "    END IF;")
    return do_block("contract", "\n".join(lines), "old_default text")


# --- contract undone ---------------------------------------------------------------------------------

def _readd_column(revision: str, table: str, column: str) -> str:
    """Return PL/pgSQL adding ``table.column`` back with the type and default expand recorded."""
    type_, default = (column_fact(revision, table, column, key) for key in ("type", "default"))
    missing = f"undo of the contract of {revision}: {VERSIONS_TABLE} has no record of {table}.{column}"
    # The default in the ADD itself: rows written since the contract get it, as they would have.
    return (f"        IF {type_} IS NULL THEN\n            {_raise(missing)}\n        END IF;\n"
            f"        EXECUTE 'ALTER TABLE {table_name(table)} ADD COLUMN {quoted(column)} ' || {type_}\n"
            f"            || coalesce(' DEFAULT ' || {default}, '');\n")


def uncontract_table_sql(revision: str, contract_revision: str, table: str, steps: Iterable[Step]) -> str:
    """Return a DO block putting ``table``'s old shape back beside the new one, as expand left it.

    Renames undone; a type-changed column's new copy gets its expand name back (nullable, no
    default) and the old column returns (its type and default as expand recorded them), filled
    with the new values converted down, then the archived ones put back exactly where the new value
    has not changed since the contract (``up(archived)`` is still the new value); a removed column
    returns with its archived values. The archive is dropped. The sync trigger is not there yet:
    nothing is converted twice. Each change only while the contracted shape is there.
    """
    table_sql, lines = table_name(table), []
    for step in of_table(steps, table):
        if isinstance(step, RenameColumn):
            lines.append(f"    IF NOT {has_column_sql(table, step.old)} THEN\n"
                         f"        ALTER TABLE {table_sql} RENAME COLUMN {quoted(step.new)} TO {quoted(step.old)};\n"
                         "    END IF;")
        elif isinstance(step, ChangeType):
            new = physical_name(revision, step.column)
            lines.append(
                f"    IF NOT {has_column_sql(table, new)} THEN\n"
                f"{_drop_not_null(table, step.column)}"
                f"        ALTER TABLE {table_sql} ALTER COLUMN {quoted(step.column)} DROP DEFAULT;\n"
                f"        ALTER TABLE {table_sql} RENAME COLUMN {quoted(step.column)} TO {quoted(new)};\n"
                f"{_readd_column(revision, table, step.column)}"
                f"        UPDATE {table_sql} SET {quoted(step.column)} = {down_sql(step, quoted(new))};\n"
                "    END IF;")
        else:
            lines.append(f"    IF NOT {has_column_sql(table, step.column)} THEN\n"
                         f"{_readd_column(revision, table, step.column)}"
                         "    END IF;")
    columns = removed_columns(steps, table)
    if columns:
        archive = f"{SCHEMA}.{quoted(archive_name(contract_revision, table))}"
        changed = {step.column: step for step in of_table(steps, table) if isinstance(step, ChangeType)}

        def restored(column: str) -> str:
            if column not in changed:  # a removed column: only the archive has its values
                return f"{quoted(column)} = a.{quoted(column)}"
            # An old value put back exactly only where the row's new value is still what it converts to:
            # a row the release after updated since the contract keeps its new value converted down.
            step, new = changed[column], quoted(physical_name(revision, column))
            return (f"{quoted(column)} = CASE WHEN {up_sql(step, f'a.{quoted(column)}')} IS NOT DISTINCT FROM t.{new} "
                    f"THEN a.{quoted(column)} ELSE t.{quoted(column)} END")

        assignments = ", ".join(restored(c) for c in columns)
        lines.append(f"    IF to_regclass({literal(archive)}) IS NOT NULL THEN\n"
                     f"        UPDATE {table_sql} t SET {assignments} FROM {archive} a WHERE t.id = a.id;\n"
                     f"        DROP TABLE {archive};\n"
                     "    END IF;")
    return do_block("uncontract", "\n".join(lines))
