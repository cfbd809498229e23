"""Checksums of applied revisions: a revision file edited after it ran is caught before the next deploy.

Flyway and Liquibase record each migration's checksum when it runs; Alembic does not. Here a
revision's checksum is the SHA-256 of the SQL it renders offline for PostgreSQL (whatever the
database's dialect, so one revision has one checksum), without the guard's ``SET`` lines: a
change of comment or layout is not a change, a change of what it runs is, also one made through
a helper it calls. ``migrate_schema upgrade`` records the checksum of each revision it applies,
in the same transaction, and of every applied revision still without one (databases migrated
before this existed, or by the plain ``alembic`` CLI); a downgrade removes it. ``plan``,
``upgrade`` and ``verify`` compare; ``verify --accept REV`` records a deliberate change.
"""
from __future__ import annotations

import hashlib
import io
from dataclasses import dataclass
from pathlib import Path

import sqlalchemy as sa
from alembic import command
from alembic.script import Script

from schema_engine import database
from schema_engine.config import CHECKSUM_TABLE, EnvOptions, alembic_config
from schema_engine.errors import AppliedRevisionChanged, UnknownRevision, alembic_errors
from schema_engine.state import recorded_revisions, script_directory

RENDER_FOR = sa.make_url("postgresql+psycopg://")  # the dialect a checksum is rendered for; never connected to

_table = sa.Table(
    CHECKSUM_TABLE, sa.MetaData(),
    sa.Column("revision", sa.String(128), primary_key=True),
    sa.Column("sha256", sa.String(64), nullable=False),
    sa.Column("recorded_at", sa.DateTime(timezone=True), server_default=sa.func.now(), nullable=False),
)
_rendered: dict[tuple[str, str, str], str] = {}  # (revision, path, source's sha256) -> checksum, for this process


@dataclass(frozen=True)
class RevisionChecksum:
    """One applied revision: the checksum recorded when it was applied, and the one its file renders now."""

    revision: str
    recorded: str | None  # None: applied before checksums were recorded (recorded on the next upgrade)
    current: str

    @property
    def changed(self) -> bool:
        return self.recorded is not None and self.recorded != self.current


def checksum(script: Script) -> str:
    """Return the SHA-256 of the PostgreSQL SQL ``script`` renders offline (a merge: of its file)."""
    source = Path(script.path).read_bytes()
    key = (script.revision, script.path, hashlib.sha256(source).hexdigest())
    if key not in _rendered:
        if isinstance(script.down_revision, (tuple, list)):
            # A range cannot start at two revisions; a merge revision runs nothing of its own anyway.
            _rendered[key] = key[2]
        else:
            out = io.StringIO()
            options = EnvOptions(command="upgrade", url=RENDER_FOR, needs_metadata=False, render_guards=False)
            with alembic_errors():
                command.upgrade(alembic_config(stdout=out, options=options),
                                f"{script.down_revision or 'base'}:{script.revision}", sql=True)
            _rendered[key] = hashlib.sha256(out.getvalue().encode()).hexdigest()
    return _rendered[key]


def ensure_table(connection: sa.Connection) -> None:
    """Create the checksum table if this database has none yet."""
    _table.create(connection, checkfirst=True)


def applied_scripts(connection: sa.Connection) -> list[Script]:
    """Return the revisions the database has applied (its recorded ones and their ancestors), oldest first."""
    script = script_directory()
    current = recorded_revisions(connection, script)
    return list(reversed(list(script.iterate_revisions(current, "base")))) if current else []


def _recorded(connection: sa.Connection) -> dict[str, str]:
    if not sa.inspect(connection).has_table(CHECKSUM_TABLE):
        return {}
    return dict(connection.execute(sa.select(_table.c.revision, _table.c.sha256)).all())


def compare(connection: sa.Connection) -> list[RevisionChecksum]:
    """Return each applied revision's recorded and current checksum, oldest first."""
    recorded = _recorded(connection)
    if connection.in_transaction():
        connection.commit()
    return [RevisionChecksum(s.revision, recorded.get(s.revision), checksum(s)) for s in applied_scripts(connection)]


def changed_message(revisions: list[str]) -> str:
    """Say which applied revisions changed, and the two ways on."""
    names = " ".join(revisions)
    return (f"applied revision(s) {names} changed since it was applied (its SQL is not what ran): put the file back "
            "as it was (git log -p on it) and write a new revision for the change; if the change is deliberate and "
            f"the database needs nothing of it, accept it with 'manage.py migrate_schema verify --accept {names}'")


def refuse_changed(connection: sa.Connection) -> None:
    """Raise ``AppliedRevisionChanged`` if an applied revision's file no longer renders what was recorded."""
    changed = [c for c in compare(connection) if c.changed]
    if changed:
        raise AppliedRevisionChanged(changed_message([c.revision for c in changed]), revisions=tuple(c.revision for c in changed))


def record(connection: sa.Connection, script: Script) -> None:
    """Record ``script``'s checksum as applied (in the caller's transaction), replacing an earlier one."""
    ensure_table(connection)
    value = checksum(script)
    connection.execute(sa.delete(_table).where(_table.c.revision == script.revision))
    connection.execute(sa.insert(_table).values(revision=script.revision, sha256=value))


def forget(connection: sa.Connection, revision: str) -> None:
    """Remove ``revision``'s checksum: a downgrade undid it (applied again, it is recorded again)."""
    if sa.inspect(connection).has_table(CHECKSUM_TABLE):
        connection.execute(sa.delete(_table).where(_table.c.revision == revision))


def record_missing(connection: sa.Connection) -> list[str]:
    """Record the checksum of every applied revision that has none; return their ids (committed)."""
    recorded = _recorded(connection)
    missing = [s for s in applied_scripts(connection) if s.revision not in recorded]
    for script in missing:
        record(connection, script)
    connection.commit()
    return [s.revision for s in missing]


def verify(*, url: sa.URL | str | None = None) -> list[RevisionChecksum]:
    """Return every applied revision's checksums (``changed`` says which differ); changes nothing."""
    with alembic_errors(), database.connect(url) as connection:
        return compare(connection)


def accept(revisions: list[str], *, url: sa.URL | str | None = None) -> list[RevisionChecksum]:
    """Record the current checksum of applied ``revisions``, accepting their changes; return what was recorded."""
    with alembic_errors(), database.connect(url) as connection:
        applied = {s.revision: s for s in applied_scripts(connection)}
        script = script_directory()
        chosen = []
        for name in revisions:
            found = script.get_revision(name)
            if found is None or found.revision not in applied:
                raise UnknownRevision(f"{name} is not a revision this database has applied; "
                                      "'manage.py migrate_schema verify' lists them")
            chosen.append(applied[found.revision])
        before = _recorded(connection)
        connection.commit()
        for found in chosen:
            record(connection, found)
        connection.commit()
        return [RevisionChecksum(s.revision, before.get(s.revision), checksum(s)) for s in chosen]
