"""Which release reads which version, and the contract's refusal while an older release is connected.

A release knows its code's head revision: it names its sessions ``reautomation@<head>``
(``release_application_name``) and reads each table an expand of its chain changes through that
expand's version schema (``read_schemas``). A contract drops the old shape, so it is refused
while sessions of a release older than its expand are connected (``env.py`` before an upgrade,
``plan`` as a problem); other clients cannot be told apart, and are not counted.
"""
from __future__ import annotations

from dataclasses import dataclass

import sqlalchemy as sa
from alembic.script import Script, ScriptDirectory

from schema_engine.errors import OldReleaseConnected
from schema_engine.versioning.names import RELEASE_PREFIX, VERSIONS_TABLE, physical_name, version_schema
from schema_engine.versioning.steps import ChangeType, DropColumn, RenameColumn, Step, changed_tables, check_steps


@dataclass(frozen=True)
class Expand:
    """An expand revision of the code's chain and its steps."""

    revision: str
    steps: tuple[Step, ...]


def is_expand(script: Script) -> bool:
    """Whether ``script`` is an expand revision (``expand_steps``, and not a contract's copy of them)."""
    return hasattr(script.module, "expand_steps") and not hasattr(script.module, "contracts")


def contracted_by(script: Script) -> str | None:
    """Return the expand revision that contract revision ``script`` contracts, or None if it is no contract."""
    return getattr(script.module, "contracts", None)


def expands(script_directory: ScriptDirectory) -> list[Expand]:
    """Return the expand revisions of the code's chain, newest first."""
    return [Expand(script.revision, check_steps(script.revision, script.module.expand_steps))
            for script in script_directory.walk_revisions() if is_expand(script)]


def read_schemas(script_directory: ScriptDirectory, *, contracted: frozenset[str] = frozenset()) -> dict[str, str]:
    """Map each table an expand of the code's chain changes to the version schema of the newest such expand.

    The site qualifies those tables with it: the release reads and writes in its own code's shape,
    with no session state (nothing a transaction pooler could lose). A table whose newest expand
    is in ``contracted`` (``contracted_versions``) is left out: the table has that shape itself,
    and a view keeps the columns it was made with, not those later revisions add.
    """
    schemas: dict[str, str] = {}
    for expand in expands(script_directory):
        for table in changed_tables(expand.steps):
            schemas.setdefault(table, "" if expand.revision in contracted else version_schema(expand.revision))
    return {table: schema for table, schema in schemas.items() if schema}


@dataclass(frozen=True)
class ReleaseSession:
    """A connected session of a release, told by its ``application_name`` (``reautomation@<its head>``)."""

    pid: int
    application_name: str

    @property
    def revision(self) -> str:
        return self.application_name[len(RELEASE_PREFIX):]


_RELEASE_SESSIONS = sa.text(
    "SELECT pid, application_name FROM pg_stat_activity WHERE datname = current_database() "
    "AND pid <> pg_backend_pid() AND starts_with(application_name, :prefix) ORDER BY pid"
).bindparams(prefix=RELEASE_PREFIX)


def old_release_sessions(connection: sa.Connection, expand_revision: str,
                         script_directory: ScriptDirectory) -> list[ReleaseSession]:
    """Return the connected sessions of releases older than expand ``expand_revision``.

    A release is older unless its head is that revision or a descendant of it; a head this code
    does not know is older too (nothing shows that it reads the new shape).
    """
    newer = {script.revision for script in script_directory.iterate_revisions("heads", expand_revision,
                                                                                 inclusive=True)}
    sessions = [ReleaseSession(pid, name) for pid, name in connection.execute(_RELEASE_SESSIONS)]
    return [session for session in sessions if session.revision not in newer]


def contract_refusals(connection: sa.Connection, pending: list[Script],
                      script_directory: ScriptDirectory) -> list[tuple[Script, str, list[ReleaseSession]]]:
    """Return, oldest first, each pending contract refused now: (revision, why in one line, the old sessions)."""
    if connection.dialect.name != "postgresql":
        return []
    pending_ids = {script.revision for script in pending}
    found = []
    for script in pending:
        expand_revision = contracted_by(script)
        if expand_revision is None:
            continue
        sessions = old_release_sessions(connection, expand_revision, script_directory)
        if not sessions:
            continue
        pids = ", ".join(str(session.pid) for session in sessions)
        names = ", ".join(dict.fromkeys(session.application_name for session in sessions))
        also = (f"; or upgrade to {expand_revision} only (the expand) meanwhile" if expand_revision in pending_ids
                else "")
        found.append((script, f"contract {script.revision} of {expand_revision} refused: {len(sessions)} session(s) "
                              f"of the release before it are connected (pids {pids}, application_name {names}): "
                              f"stop that release first{also}", sessions))
    return found


def refuse_contract_while_old_release(connection: sa.Connection, pending: list[Script],
                                      script_directory: ScriptDirectory) -> None:
    """Raise ``OldReleaseConnected`` for the first pending contract while a release older than its expand is connected.

    The contract drops the old shape that release reads and writes.
    """
    found = contract_refusals(connection, pending, script_directory)
    if found:
        script, why, sessions = found[0]
        raise OldReleaseConnected(why, revision=script.revision, expand_revision=contracted_by(script) or "",
                                  pids=tuple(session.pid for session in sessions))


def in_flight_columns(connection: sa.Connection, script_directory: ScriptDirectory) -> frozenset[tuple[str, str]]:
    """Return the (table, column) pairs that expands applied here and not yet contracted hold in two shapes.

    Between expand and contract the tables keep the old shape and the new release's models the
    new one (through the version schema): a drift check compares those columns after the contract.
    """
    if not sa.inspect(connection).has_table(VERSIONS_TABLE):
        return frozenset()
    open_expands = set(connection.execute(sa.text(
        f"SELECT revision FROM {VERSIONS_TABLE} WHERE contracted_at IS NULL")).scalars())
    pairs: set[tuple[str, str]] = set()
    for expand in expands(script_directory):
        if expand.revision not in open_expands:
            continue
        for step in expand.steps:
            if isinstance(step, RenameColumn):
                pairs |= {(step.table, step.old), (step.table, step.new)}
            elif isinstance(step, ChangeType):
                pairs |= {(step.table, step.column), (step.table, physical_name(expand.revision, step.column))}
            elif isinstance(step, DropColumn):
                pairs.add((step.table, step.column))
    return frozenset(pairs)

