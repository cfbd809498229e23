"""The backfill gate: a revision that needs a backfill finished (expand/contract) waits until it is.

A revision that tightens what a backfill fills (the guide's phase 4, NOT NULL) declares
``requires_backfills = ("messages",)`` at module level. The engine knows no backfill itself: the
app that owns one registers it here from its ``AppConfig.ready()`` (``calls/apps.py``), with how
to count the rows still needing it. ``migrations_alembic/env.py`` runs the gate before every
upgrade, so ``alembic upgrade`` and ``migrate_schema upgrade`` refuse the same revisions; ``plan``
reports the same blockers.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

import sqlalchemy as sa
from alembic.script import Script

from schema_engine.errors import BackfillRequired


@dataclass(frozen=True)
class RegisteredBackfill:
    """A backfill as the gate knows it: its name, how many rows still need it, the command that runs it."""

    name: str
    pending_rows: Callable[[sa.URL], int]
    command: str


_REGISTRY: dict[str, RegisteredBackfill] = {}


def register_backfill(name: str, *, pending_rows: Callable[[sa.URL], int], command: str) -> None:
    """Make backfill ``name`` known to the gate (called from an app's ``ready()``)."""
    _REGISTRY[name] = RegisteredBackfill(name=name, pending_rows=pending_rows, command=command)


def registered() -> set[str]:
    """Return the names of the backfills the installed apps registered."""
    return set(_REGISTRY)


def requires_backfills(script: Script) -> tuple[str, ...]:
    """Return the backfills revision ``script`` declares must be complete before it runs."""
    return tuple(getattr(script.module, "requires_backfills", ()))


def blockers(pending: list[Script], *, url: sa.URL) -> list[tuple[Script, tuple[str, ...], str]]:
    """Return, oldest first, each pending revision that may not run yet: (revision, backfills, why)."""
    pending_ids = {rev.revision for rev in pending}
    found = []
    for rev in pending:
        names = requires_backfills(rev)
        if not names:
            continue
        unknown = [name for name in names if name not in _REGISTRY]
        if unknown:
            found.append((rev, names, f"revision {rev.revision} needs the {', '.join(unknown)} backfill, which no "
                                      "installed app registers; check the revision's requires_backfills"))
        elif rev.down_revision in pending_ids:
            first = _REGISTRY[names[0]]
            found.append((rev, names, (
                f"revision {rev.revision} needs the {', '.join(names)} backfill finished, which cannot have run "
                f"yet: 'manage.py migrate_schema upgrade {rev.down_revision}', then '{first.command}', then "
                "upgrade again")))
        else:
            for name in names:
                rows = _REGISTRY[name].pending_rows(url)
                if rows:
                    found.append((rev, names, (
                        f"revision {rev.revision} needs the {name} backfill finished: {rows:,} rows still need it; "
                        f"run '{_REGISTRY[name].command}', then upgrade again")))
    return found


def refuse_blocked(pending: list[Script], *, url: sa.URL) -> None:
    """Raise ``BackfillRequired`` for the first pending revision whose backfill is not finished."""
    found = blockers(pending, url=url)
    if found:
        rev, names, why = found[0]
        raise BackfillRequired(why, revision=rev.revision, backfills=names)
