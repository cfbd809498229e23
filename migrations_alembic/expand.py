"""What expand and contract revisions call: ``expand(revision, expand_steps)`` and its three companions.

Minimal stand-in written by the autogenerate helper: the runtime helper's module replaces it with
these signatures unchanged (DESIGN25.md). In ``--sql`` (offline) mode each call emits nothing, so
``plan`` can read the revisions' other SQL; run against a database, each raises NotImplementedError.
"""
from __future__ import annotations

from typing import Sequence

from alembic import op

from schema_engine.versioning import ChangeType, DropColumn, RenameColumn, Step, fill_name

__all__ = ["ChangeType", "DropColumn", "RenameColumn", "contract", "expand", "fill_name", "undo_contract",
           "undo_expand"]


def _not_yet(what: str) -> None:
    if op.get_context().as_sql:
        return
    raise NotImplementedError(f"{what}: migrations_alembic/expand.py is a stand-in until the runtime helper's lands")


def expand(revision: str, steps: Sequence[Step]) -> None:
    """Make the new shape of ``steps`` exist beside the old one (schema ``v_<revision>``)."""
    _not_yet("expand")


def undo_expand(revision: str, steps: Sequence[Step]) -> None:
    """Take back what ``expand`` added; the old shape never left."""
    _not_yet("undo_expand")


def contract(revision: str, steps: Sequence[Step]) -> None:
    """Remove the old shape of expand revision ``revision``'s ``steps``."""
    _not_yet("contract")


def undo_contract(revision: str, steps: Sequence[Step]) -> None:
    """Put the old shape of ``steps`` back, its values from the archive."""
    _not_yet("undo_contract")
