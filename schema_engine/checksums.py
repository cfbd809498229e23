"""Checksums of applied revisions: a revision file edited after it ran is caught before the next deploy.

Flyway and Liquibase record each migration's checksum when it runs; Alembic does not. Here a
revision has two: the SHA-256 of the SQL its upgrade renders offline for PostgreSQL (whatever the
database's dialect, so one revision has one checksum), without the guard's ``SET`` lines, and the
same of its downgrade, which a rollback runs: a change of comment or layout is not a change, a
change of what it runs is, also one made through a helper it calls. An upgrade (``migrate_schema``
or the plain ``alembic`` CLI, both through ``env.py``) records both for each revision it applies,
in the same transaction, and for every applied revision still without them; a downgrade removes
them. ``plan``, ``upgrade``, ``downgrade`` and ``verify`` compare; ``verify --accept REV`` records
a deliberate change.

Rows recorded before downgrades were covered hold no downgrade checksum (``downgrade_sha256`` is
NULL, the column is added on the next write): their upgrade is compared as before, and their
downgrade as it is then is recorded by the next upgrade, accepted on first sight.

The SQL is rendered with a ``MigrationContext`` of its own in offline mode, never through
``alembic.command``: ``env.py`` renders while Alembic runs it, and a nested command would replace
the running ``alembic.context``. Only ``op`` is borrowed, so nothing renders while a revision runs.
"""
from __future__ import annotations

import hashlib
import io
from dataclasses import dataclass
from pathlib import Path
from typing import Iterable

import sqlalchemy as sa
from alembic.operations import Operations
from alembic.runtime.migration import MigrationContext, RevisionStep
from alembic.script import Script

from schema_engine import database
from schema_engine.config import CHECKSUM_TABLE
from schema_engine.errors import AppliedRevisionChanged, UnknownRevision, alembic_errors
from schema_engine.state import recorded_revisions, script_directory

RENDER_FOR = sa.make_url("postgresql+psycopg://")  # the dialect a checksum is rendered for; never connected to

_table = sa.Table(
    CHECKSUM_TABLE, sa.MetaData(),
    sa.Column("revision", sa.String(128), primary_key=True),
    sa.Column("sha256", sa.String(64), nullable=False),  # of the upgrade's SQL
    sa.Column("recorded_at", sa.DateTime(timezone=True), server_default=sa.func.now(), nullable=False),
    sa.Column("downgrade_sha256", sa.String(64), nullable=True),  # NULL: recorded before downgrades were covered
)
# (revision, path, source's sha256, upgrade?) -> checksum, for this process
_rendered: dict[tuple[str, str, str, bool], str] = {}


@dataclass(frozen=True)
class RevisionChecksum:
    """One applied revision: the checksum recorded when it was applied, and the one its file renders now."""

    revision: str
    recorded: str | None  # the upgrade's; None: applied before checksums were recorded (recorded on the next upgrade)
    current: str
    # None: recorded before downgrades were covered (recorded on the next upgrade)
    recorded_downgrade: str | None = None
    current_downgrade: str = ""

    @property
    def changed_parts(self) -> tuple[str, ...]:
        """Which of its functions render other SQL than was recorded: ``upgrade``, ``downgrade``, both or none."""
        return tuple(part
                     for part, recorded, current in (("upgrade", self.recorded, self.current),
                                                     ("downgrade", self.recorded_downgrade, self.current_downgrade))
                     if recorded is not None and recorded != current)

    @property
    def changed(self) -> bool:
        return bool(self.changed_parts)

    @property
    def state(self) -> str:
        """Say in a few words how the file compares with what was recorded (``migrate_schema verify``)."""
        if self.changed:
            return f"CHANGED since it was applied ({' and '.join(self.changed_parts)})"
        if self.recorded is None:
            return "not recorded yet (recorded by the next upgrade)"
        if self.recorded_downgrade is None:
            return "ok; its downgrade not recorded yet (recorded by the next upgrade)"
        return "ok"


def render(script: Script, *, upgrade: bool = True) -> str:
    """Return the SQL ``script``'s upgrade (or downgrade) alone renders offline for PostgreSQL.

    Not while a revision runs (``op`` belongs to it then): render before, as ``env.py`` does.
    """
    directory = script_directory()
    out = io.StringIO()
    step = RevisionStep(directory.revision_map, script, upgrade)
    context = MigrationContext.configure(url=RENDER_FOR, dialect_opts={"paramstyle": "named"}, opts={
        # As env.py renders --sql (its offline run), so checksums recorded before stay comparable.
        "as_sql": True, "literal_binds": True, "output_buffer": out, "transactional_ddl": True,
        "transaction_per_migration": True, "script": directory, "render_as_batch": False,
        "starting_rev": (script.down_revision or "base") if upgrade else script.revision,
        "fn": lambda heads, migration_context: [step],
        "on_archive": lambda message: None,
    })
    with alembic_errors(), Operations.context(context), context.begin_transaction():
        context.run_migrations()
    return out.getvalue()


def checksum(script: Script, *, upgrade: bool = True) -> str:
    """Return the SHA-256 of the PostgreSQL SQL ``script``'s upgrade (or downgrade) renders (a merge: of its file)."""
    source = Path(script.path).read_bytes()
    key = (script.revision, script.path, hashlib.sha256(source).hexdigest(), upgrade)
    if key not in _rendered:
        if isinstance(script.down_revision, (tuple, list)):
            # A merge revision joins branches and runs nothing of its own: its file is what it is.
            _rendered[key] = key[2]
        else:
            _rendered[key] = hashlib.sha256(render(script, upgrade=upgrade).encode()).hexdigest()
    return _rendered[key]


def render_ahead(scripts: Iterable[Script]) -> None:
    """Render the checksums of ``scripts`` now, before they run: recording them then must not render."""
    for script in scripts:
        checksum(script)
        checksum(script, upgrade=False)


def ensure_table(connection: sa.Connection) -> None:
    """Create the checksum table if this database has none yet; add the downgrade's column to an older one."""
    _table.create(connection, checkfirst=True)
    if "downgrade_sha256" not in {c["name"] for c in sa.inspect(connection).get_columns(CHECKSUM_TABLE)}:
        quote = connection.dialect.identifier_preparer.quote
        connection.execute(sa.text(f"ALTER TABLE {quote(CHECKSUM_TABLE)} ADD COLUMN downgrade_sha256 VARCHAR(64)"))


def applied_scripts(connection: sa.Connection) -> list[Script]:
    """Return the revisions the database has applied (its recorded ones and their ancestors), oldest first."""
    script = script_directory()
    current = recorded_revisions(connection, script)
    return list(reversed(list(script.iterate_revisions(current, "base")))) if current else []


def _recorded(connection: sa.Connection) -> dict[str, tuple[str, str | None]]:
    """Return revision -> (upgrade's checksum, downgrade's or None) as recorded."""
    inspector = sa.inspect(connection)
    if not inspector.has_table(CHECKSUM_TABLE):
        return {}
    covered = "downgrade_sha256" in {c["name"] for c in inspector.get_columns(CHECKSUM_TABLE)}
    downgrade = _table.c.downgrade_sha256 if covered else sa.null()
    rows = connection.execute(sa.select(_table.c.revision, _table.c.sha256, downgrade)).all()
    return {revision: (upgrade, down) for revision, upgrade, down in rows}


def _compared(script: Script, recorded: tuple[str, str | None] | None) -> RevisionChecksum:
    upgrade, downgrade = recorded or (None, None)
    return RevisionChecksum(script.revision, upgrade, checksum(script), downgrade, checksum(script, upgrade=False))


def compare(connection: sa.Connection) -> list[RevisionChecksum]:
    """Return each applied revision's recorded and current checksums, oldest first."""
    recorded = _recorded(connection)
    if connection.in_transaction():
        connection.commit()
    return [_compared(s, recorded.get(s.revision)) for s in applied_scripts(connection)]


def changed_message(revisions: list[str]) -> str:
    """Say which applied revisions changed, and the two ways on."""
    names = " ".join(revisions)
    return (f"applied revision(s) {names} changed since it was applied (the SQL its upgrade or downgrade renders is "
            "not what was recorded when it ran): put the file back as it was (git log -p on it) and write a new "
            "revision for the change; if the change is deliberate and the database needs nothing of it, accept it "
            f"with 'manage.py migrate_schema verify --accept {names}'")


def refuse_changed(connection: sa.Connection) -> None:
    """Raise ``AppliedRevisionChanged`` if an applied revision's file no longer renders what was recorded."""
    changed = [c for c in compare(connection) if c.changed]
    if changed:
        raise AppliedRevisionChanged(changed_message([c.revision for c in changed]),
                                     revisions=tuple(c.revision for c in changed))


def record(connection: sa.Connection, script: Script) -> None:
    """Record ``script``'s checksums as applied (in the caller's transaction), replacing earlier ones."""
    ensure_table(connection)
    upgrade, downgrade = checksum(script), checksum(script, upgrade=False)
    connection.execute(sa.delete(_table).where(_table.c.revision == script.revision))
    connection.execute(sa.insert(_table).values(revision=script.revision, sha256=upgrade, downgrade_sha256=downgrade))


def forget(connection: sa.Connection, revision: str) -> None:
    """Remove ``revision``'s checksum: a downgrade undid it (applied again, it is recorded again)."""
    if sa.inspect(connection).has_table(CHECKSUM_TABLE):
        connection.execute(sa.delete(_table).where(_table.c.revision == revision))


def record_missing(connection: sa.Connection) -> list[str]:
    """Record the checksums of every applied revision that has none; return their ids (committed).

    A revision recorded before downgrades were covered gets its downgrade's checksum, as the file
    renders it now; its upgrade's stays as recorded.
    """
    recorded = _recorded(connection)
    applied = applied_scripts(connection)
    missing = [s for s in applied if s.revision not in recorded]
    for script in missing:
        record(connection, script)
    without_downgrade = [s for s in applied if s.revision in recorded and recorded[s.revision][1] is None]
    if without_downgrade:
        ensure_table(connection)
    for script in without_downgrade:
        connection.execute(sa.update(_table).where(_table.c.revision == script.revision)
                           .values(downgrade_sha256=checksum(script, upgrade=False)))
    connection.commit()
    return [s.revision for s in missing + without_downgrade]


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
        return [_compared(s, before.get(s.revision)) for s in chosen]
