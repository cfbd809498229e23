"""The backfill gate: a revision that needs a backfill finished (expand/contract) waits until it is.

A revision that tightens what a backfill fills (the guide's phase 4, NOT NULL) declares
``requires_backfills = ("messages",)`` at module level. The engine knows no backfill itself: the
app that owns one registers it here from its ``AppConfig.ready()`` (``calls/apps.py``), with how
to count the rows still needing it; backfills named at run time (the fills ``expand_<revision>``
that the code's expand revisions declare, ``schema_engine.versioning``) are answered by a source
the app registers (``register_backfill_source``). ``migrations_alembic/env.py`` runs the gate
before every upgrade, so ``alembic upgrade`` and ``migrate_schema upgrade`` refuse the same
revisions; ``plan`` reports the same blockers.
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
# Each answers a name with its backfill, or None: for names known only at run time.
_SOURCES: list[Callable[[str], RegisteredBackfill | None]] = []


def register_backfill(name: str, *, pending_rows: Callable[[sa.URL], int], command: str) -> None:
    """Make backfill ``name`` known to the gate (called from an app's ``ready()``)."""
    _REGISTRY[name] = RegisteredBackfill(name=name, pending_rows=pending_rows, command=command)


def register_backfill_source(find: Callable[[str], RegisteredBackfill | None]) -> None:
    """Let an app answer for backfills it knows only at run time (called from its ``ready()``), once."""
    if find not in _SOURCES:
        _SOURCES.append(find)


def registered() -> set[str]:
    """Return the names of the backfills the installed apps registered (not those a source answers for)."""
    return set(_REGISTRY)


def registered_backfill(name: str) -> RegisteredBackfill | None:
    """Return the backfill called ``name``, as an app registered it or a source answers for it; None if none does."""
    if name in _REGISTRY:
        return _REGISTRY[name]
    return next((found for find in _SOURCES if (found := find(name)) is not None), None)


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
        known = {name: registered_backfill(name) for name in names}
        unknown = [name for name, backfill in known.items() if backfill is None]
        if unknown:
            found.append((rev, names, f"revision {rev.revision} needs the {', '.join(unknown)} backfill, which no "
                                      "installed app registers; check the revision's requires_backfills"))
            continue
        if rev.down_revision in pending_ids:
            # Nor can a fill whose expand revision is pending (an ancestor of this one's parent),
            # whose count (0: no column to fill yet) would say nothing.
            first = known[names[0]]
            found.append((rev, names, (
                f"revision {rev.revision} needs the {', '.join(names)} backfill finished, which cannot have run "
                f"yet: 'manage.py migrate_schema upgrade {rev.down_revision}', then '{first.command}', then "
                "upgrade again")))
            continue
        for name, backfill in known.items():
            rows = backfill.pending_rows(url)
            if rows:
                found.append((rev, names, (
                    f"revision {rev.revision} needs the {name} backfill finished: {rows:,} rows still need it; "
                    f"run '{backfill.command}', then upgrade again")))
    return found


def refuse_blocked(pending: list[Script], *, url: sa.URL) -> None:
    """Raise ``BackfillRequired`` for the first pending revision whose backfill is not finished."""
    found = blockers(pending, url=url)
    if found:
        rev, names, why = found[0]
        raise BackfillRequired(why, revision=rev.revision, backfills=names)
