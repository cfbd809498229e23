"""Where a database stands in the revision history: what it records, what is pending, what is broken.

Every command starts here: ``recorded_revisions`` refuses, in one line, an ``alembic_version``
that no command can start from (a revision this code does not know, or several on one line of
history), which Alembic itself would answer with a traceback.
"""
from __future__ import annotations

from dataclasses import dataclass

import sqlalchemy as sa
from alembic.runtime.migration import MigrationContext
from alembic.script import Script, ScriptDirectory

from schema_engine import database
from schema_engine.config import alembic_config
from schema_engine.errors import (
    SeveralRecordedRevisions,
    UnknownRecordedRevision,
    UnknownRevision,
    alembic_errors,
)


@dataclass(frozen=True)
class SchemaStatus:
    """Where a database stands in the revision history."""

    current: tuple[str, ...]
    heads: tuple[str, ...]
    pending: tuple[tuple[str, str], ...]  # (revision, doc), oldest first
    invalid_indexes: tuple[tuple[str, str], ...] = ()  # (index, table): left by a failed CONCURRENTLY build

    @property
    def at_head(self) -> bool:
        return set(self.current) == set(self.heads)


def script_directory() -> ScriptDirectory:
    """Return the revisions of this code (``migrations_alembic/versions``, or ``ALEMBIC_SCRIPT_LOCATION``).

    Every revision file is imported here, so that one that cannot be raises ``BrokenRevisionFile``
    (naming it) wherever the history is read, not a traceback from deep inside Alembic.
    """
    script = ScriptDirectory.from_config(alembic_config())
    with alembic_errors():
        script.revision_map.heads  # noqa: B018 - reading it imports the files
    return script


def known_revisions(script: ScriptDirectory | None = None) -> set[str]:
    """Return the id of every revision this code has."""
    return {rev.revision for rev in (script or script_directory()).walk_revisions()}


def summary(script: Script | None) -> str:
    """Return the first line of a revision's docstring: what it does."""
    return script.doc.strip().splitlines()[0] if script is not None and script.doc else ""


def given(revision: str, what: str = "revision") -> str:
    """Return ``revision`` if it names something; an empty argument is refused (Alembic would read it as head)."""
    if not revision or not revision.strip():
        raise UnknownRevision(f"no {what} given (an empty argument); 'manage.py migrate_schema history' lists them")
    return revision.strip()


def recorded_revisions(connection: sa.Connection, script: ScriptDirectory | None = None) -> tuple[str, ...]:
    """Return the revisions the database records, refusing what no command can start from.

    Several rows are valid only as the heads of separate branches. A revision this code does not
    know, or two on one line of history (a restore into a live database leaves both), raise
    ``RecordedRevisionsInvalid``, whose way out is ``stamp REV --purge``.
    """
    current = tuple(MigrationContext.configure(connection).get_current_heads())
    if connection.in_transaction():
        connection.commit()
    script = script or script_directory()
    known = known_revisions(script)
    unknown = tuple(rev for rev in current if rev not in known)
    if unknown:
        raise UnknownRecordedRevision(
            f"the database records revision {', '.join(unknown)}, which this code does not know (the code is older "
            "than the database); deploy the code that has it, or, once the schema is what a known revision makes "
            "it, record that one with 'manage.py migrate_schema stamp REV --purge'", revisions=unknown)
    for rev in current if len(current) > 1 else ():
        below = {s.revision for s in script.iterate_revisions(rev, "base")} - {rev}
        if below & set(current):
            raise SeveralRecordedRevisions(
                f"the database records several revisions on one line of history ({', '.join(current)}): "
                "alembic_version has more than one row, as a restore into a live database leaves it; "
                "'manage.py migrate_schema restore BACKUP --yes' puts a backup back whole, or record the "
                "revision the schema is at with 'manage.py migrate_schema stamp REV --purge'", revisions=current)
    return current


def pending_scripts(script: ScriptDirectory, current: tuple[str, ...], target: str) -> list[Script]:
    """Return the revisions an upgrade from ``current`` to ``target`` applies, oldest first."""
    with alembic_errors():
        return list(reversed(list(script.iterate_revisions(target, current or "base"))))


def status(*, url: sa.URL | str | None = None) -> SchemaStatus:
    """Return the database's current revision(s), the head(s) and the pending revisions."""
    with alembic_errors():
        script = script_directory()
        with database.connect(url) as connection:
            current = recorded_revisions(connection, script)
            invalid = invalid_indexes(connection)
        heads = tuple(script.get_heads())
        applied = {rev.revision for rev in script.iterate_revisions(current, "base")} if current else set()
        # Every revision below a head that is not applied, oldest first: this holds with several
        # heads too, where walking from the database's revision to each head would not.
        pending = tuple((rev.revision, summary(rev)) for rev in reversed(list(script.iterate_revisions(heads, "base")))
                        if rev.revision not in applied)
    return SchemaStatus(current=current, heads=heads, pending=pending, invalid_indexes=invalid)


def applied_revisions(*, url: sa.URL | str | None = None) -> set[str]:
    """Return the database's revision(s) and all their ancestors (empty for an unmigrated database)."""
    script = script_directory()
    with alembic_errors(), database.connect(url) as connection:
        current = recorded_revisions(connection, script)
    return {rev.revision for rev in script.iterate_revisions(current, "base")} if current else set()


def invalid_index_problem(index: str, table: str) -> str:
    """Return what to say of an INVALID index, and what to do about it."""
    return (f"index {index} on {table} is INVALID (a CONCURRENTLY build failed): writes pay for it and queries "
            "cannot use it; 'migrate_schema upgrade head' rebuilds it if a revision owns it, else DROP INDEX "
            "CONCURRENTLY it")


def invalid_indexes(connection: sa.Connection) -> tuple[tuple[str, str], ...]:
    """Return PostgreSQL's INVALID indexes as (index, table): never used, still maintained on writes.

    A ``CREATE INDEX CONCURRENTLY`` that failed or was killed leaves one; upgrading again rebuilds it.
    """
    if connection.dialect.name != "postgresql":
        return ()
    rows = connection.execute(sa.text(
        "SELECT c.relname, t.relname FROM pg_index i "
        "JOIN pg_class c ON c.oid = i.indexrelid JOIN pg_class t ON t.oid = i.indrelid "
        "WHERE NOT i.indisvalid AND pg_catalog.pg_table_is_visible(c.oid) ORDER BY 2, 1"
    ))
    return tuple((index, table) for index, table in rows)
