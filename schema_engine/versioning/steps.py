"""The steps an expand revision declares (``expand_steps = [...]``), and their up/down expressions.

Frozen data, checked when made: a name that is no plain identifier, or an expression that is not
one SQL expression, is refused in one line (``InvalidExpandStep``).
"""
from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Iterable, Union

import sqlalchemy as sa
from sqlalchemy.dialects import postgresql

from schema_engine.errors import InvalidExpandStep
from schema_engine.versioning.names import identifier, version_schema


@dataclass(frozen=True)
class RenameColumn:
    """Rename ``table.old`` to ``new``. Expand moves no data (the view says ``old AS new``); contract renames."""

    table: str
    old: str
    new: str

    def __post_init__(self) -> None:
        identifier(self.table, "table")
        identifier(self.old, "column")
        identifier(self.new, "column")

    def as_json(self) -> dict[str, str]:
        return {"kind": "rename", "table": self.table, "old": self.old, "new": self.new}


@dataclass(frozen=True)
class ChangeType:
    """Give ``table.column`` type ``type_`` through a converted copy kept in step by a trigger.

    ``up`` converts the old column's value (an SQL expression naming the column, e.g.
    ``"duration_seconds::bigint"``); ``down`` converts back from the new one
    (``"duration_seconds::integer"``). Both name the column by its plain name (``substitute``).
    """

    table: str
    column: str
    type_: sa.types.TypeEngine
    up: str
    down: str

    def __post_init__(self) -> None:
        identifier(self.table, "table")
        identifier(self.column, "column")
        if not isinstance(self.type_, sa.types.TypeEngine):
            raise InvalidExpandStep(f"ChangeType of {self.table}.{self.column}: type_ must be an SQLAlchemy type "
                                    f"instance such as sa.BigInteger(), not {self.type_!r}")
        for name, expression in (("up", self.up), ("down", self.down)):
            _check_expression(expression, f"ChangeType of {self.table}.{self.column}: {name}")

    @property
    def pg_type(self) -> str:
        """The new type as PostgreSQL spells it."""
        return self.type_.compile(dialect=postgresql.dialect())

    def as_json(self) -> dict[str, str]:
        return {"kind": "change_type", "table": self.table, "column": self.column, "type": self.pg_type,
                "up": self.up, "down": self.down}


@dataclass(frozen=True)
class DropColumn:
    """Remove ``table.column``: the new release's view leaves it out; contract archives and drops it."""

    table: str
    column: str

    def __post_init__(self) -> None:
        identifier(self.table, "table")
        identifier(self.column, "column")

    def as_json(self) -> dict[str, str]:
        return {"kind": "drop", "table": self.table, "column": self.column}


Step = Union[RenameColumn, ChangeType, DropColumn]


def check_steps(revision: str, steps: Iterable[Step]) -> tuple[Step, ...]:
    """Return ``steps`` as a tuple; raise ``InvalidExpandStep`` unless each column is changed by one step only."""
    version_schema(revision)  # the revision id must name a schema
    steps = tuple(steps)
    if not steps:
        raise InvalidExpandStep(f"expand {revision} has no steps: give expand_steps at least one")
    seen: set[tuple[str, str]] = set()
    for step in steps:
        if not isinstance(step, (RenameColumn, ChangeType, DropColumn)):
            raise InvalidExpandStep(f"expand {revision}: {step!r} is not a step (RenameColumn, ChangeType, DropColumn)")
        for name in (step.old, step.new) if isinstance(step, RenameColumn) else (step.column,):
            if (step.table, name) in seen:
                raise InvalidExpandStep(f"expand {revision} changes {step.table}.{name} twice: one step per column")
            seen.add((step.table, name))
    return steps


def changed_tables(steps: Iterable[Step]) -> list[str]:
    """Return the tables ``steps`` change, each once, in the order they first appear."""
    return list(dict.fromkeys(step.table for step in steps))


def of_table(steps: Iterable[Step], table: str) -> list[Step]:
    """Return the steps that change ``table``."""
    return [step for step in steps if step.table == table]


def removed_columns(steps: Iterable[Step], table: str) -> list[str]:
    """Return the old columns of ``table`` that the steps remove from the new shape (changed in type, or dropped)."""
    return [step.column for step in of_table(steps, table) if isinstance(step, (ChangeType, DropColumn))]


# --- the up/down expressions ------------------------------------------------------------------------

# A string literal, a quoted identifier, a type after ``::``, a qualified name after ``.``, or a word.
_TOKEN = re.compile(r"'(?:[^']|'')*'|\"(?:[^\"]|\"\")*\"|::\s*\w+|\.\s*\w+|\w+")
_QUOTED = re.compile(r"'(?:[^']|'')*'|\"(?:[^\"]|\"\")*\"")


def substitute(expression: str, column: str, replacement: str) -> str:
    """Return ``expression`` with each reference to ``column`` replaced by ``replacement``.

    A reference is the column's plain name as a whole word (in any case, as PostgreSQL folds it),
    outside string literals and quoted identifiers, and neither a type after ``::`` nor a name
    qualified after ``.``: in ``"CASE WHEN outcome = 'outcome' THEN outcome::text END"`` the
    first and last ``outcome`` are references.
    """
    return _TOKEN.sub(lambda m: replacement if m.group(0).lower() == column else m.group(0), expression)


def _check_expression(expression: object, what: str) -> None:
    if not isinstance(expression, str) or not expression.strip():
        raise InvalidExpandStep(f"{what} must be an SQL expression, not {expression!r}")
    bare = _QUOTED.sub("", expression)
    if any(mark in bare for mark in (";", "$", "--", "/*")):
        raise InvalidExpandStep(f"{what} must be one SQL expression (no ;, $, or comments outside literals): "
                                f"{expression!r}")


def up_sql(step: ChangeType, source: str) -> str:
    """Return ``step.up`` reading the old column as ``source`` (e.g. ``NEW."duration_seconds"``)."""
    return f"({substitute(step.up, step.column, source)})"


def down_sql(step: ChangeType, source: str) -> str:
    """Return ``step.down`` reading the new column as ``source``."""
    return f"({substitute(step.down, step.column, source)})"
