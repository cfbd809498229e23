"""Expand/contract steps and their names (a minimal stand-in: the "runtime" helper writes the real module).

Only what the general backfill needs: the ``ChangeType`` step, the names an expand gives its new
physical columns and its fill, the fill's SQL, and which revisions of a chain declare fills.
The real module keeps these names and signatures (docs: /tmp/notes/DESIGN25.md).
"""
from __future__ import annotations

from dataclasses import dataclass

from alembic.script import ScriptDirectory
from sqlalchemy.types import TypeEngine

# PostgreSQL truncates identifiers to this many bytes.
IDENTIFIER_LENGTH = 63


@dataclass(frozen=True)
class ChangeType:
    """Change ``table.column``'s type: ``up`` computes the new value from the old column, ``down`` the reverse.

    Both are SQL expressions over the column's name (``"duration_seconds::bigint"``).
    """

    table: str
    column: str
    type_: TypeEngine
    up: str
    down: str


def physical_name(revision: str, column: str) -> str:
    """Return the name of the new physical column expand ``revision`` adds beside ``column``."""
    return f"_{revision}_{column}"[:IDENTIFIER_LENGTH]


def fill_name(revision: str) -> str:
    """Return the name of the backfill that fills expand ``revision``'s new columns."""
    return f"expand_{revision}"


def _quoted(name: str) -> str:
    return '"' + name.replace('"', '""') + '"'


def fill_sql(revision: str, step: ChangeType) -> tuple[str, str]:
    """Return (the UPDATE filling one batch of ``step``'s new column, the condition "this row still needs it").

    The UPDATE has two ``{p}`` placeholders, the batch's bounds: ``id > lo AND id <= hi``. It is
    to run with the setting ``'reautomation.fill'`` on locally, so that the sync trigger keeps out.
    """
    new, old = _quoted(physical_name(revision, step.column)), _quoted(step.column)
    pending = f"{new} IS NULL AND {old} IS NOT NULL"
    return (f"UPDATE {_quoted(step.table)} SET {new} = {step.up} WHERE id > {{p}} AND id <= {{p}} AND {pending}",
            pending)


def declared_fills(script_directory: ScriptDirectory) -> dict[str, list[ChangeType]]:
    """Return each fill the chain's expand revisions declare: its name -> its ``ChangeType`` steps.

    An expand revision has ``expand_steps`` (and no ``contracts``: a contract carries a copy of them).
    """
    fills = {}
    for script in reversed(list(script_directory.walk_revisions())):
        module = script.module
        if getattr(module, "contracts", None):
            continue
        steps = [step for step in getattr(module, "expand_steps", ()) if isinstance(step, ChangeType)]
        if steps:
            fills[fill_name(script.revision)] = steps
    return fills
