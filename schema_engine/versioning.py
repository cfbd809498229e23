"""The expand/contract steps an expand revision declares (``expand_steps``), as data.

Minimal stand-in written by the autogenerate helper so that its work is not blocked: the runtime
helper's module (views, triggers, fills, the old-session check) replaces it, with these names and
fields unchanged (DESIGN25.md).
"""
from __future__ import annotations

from dataclasses import dataclass

from sqlalchemy.types import TypeEngine


@dataclass(frozen=True)
class RenameColumn:
    """``table.old`` is called ``new`` in the new shape; no data moves."""

    table: str
    old: str
    new: str


@dataclass(frozen=True)
class ChangeType:
    """``table.column`` becomes ``type_``: ``up`` converts the old value (SQL over the column's name), ``down`` back."""

    table: str
    column: str
    type_: TypeEngine
    up: str
    down: str


@dataclass(frozen=True)
class DropColumn:
    """``table.column`` is gone from the new shape; contract archives its values and drops it."""

    table: str
    column: str


Step = RenameColumn | ChangeType | DropColumn


def fill_name(expand_revision: str) -> str:
    """Return the name of the fill (backfill) of expand revision ``expand_revision``'s new columns."""
    return f"expand_{expand_revision}"
