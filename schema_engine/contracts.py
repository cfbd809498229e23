"""A deploy applies what it may now, and leaves a contract that must wait pending, saying why.

An expand and its contract are written together (``revision --autogenerate``) but run apart: the
contract drops the old shape, so it waits for its expand's fill (the gate) and for the release
before the expand to be gone (``versioning.contract_refusals``). ``upgrade --defer-contracts``
(``scripts/deploy``) applies the pending revisions up to the first contract that must wait and
reports it (``ContractDeferred``); the next deploy, once it may, applies it. Without the option a
waiting contract is refused, as before (``env.py``).
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import TextIO

import sqlalchemy as sa
from alembic.script import Script

from schema_engine import commands, database, gate, versioning
from schema_engine.errors import OldReleaseConnected
from schema_engine.progress import Event, Reporter, ignore
from schema_engine.state import pending_scripts, recorded_revisions, script_directory, status


@dataclass(frozen=True)
class ContractDeferred(Event):
    """A pending contract that may not run yet, left pending by a deploy."""

    revision: str
    why: str

    def describe(self) -> str:
        return (f"Deferred {self.revision}: {self.why}; it stays pending: the next 'scripts/deploy' (or "
                "'migrate_schema upgrade head') applies it once it may")


def waiting_contract(connection: sa.Connection, pending: list[Script], url: sa.URL) -> tuple[Script, str] | None:
    """Return the first of ``pending`` (oldest first) that is a contract which may not run now, with why; or None."""
    if not any(versioning.contracted_by(script) for script in pending):
        return None
    why = {script.revision: reason for script, _names, reason in gate.blockers(pending, url=url)}
    for script, reason, _sessions in versioning.contract_refusals(connection, pending, script_directory()):
        why.setdefault(script.revision, reason)
    return next(((script, why[script.revision]) for script in pending
                 if versioning.contracted_by(script) and script.revision in why), None)


def upgrade_deferring_contracts(*, revision: str = "head", url: sa.URL | str | None = None,
                                stdout: TextIO | None = None, reporter: Reporter = ignore) -> commands.MigrationResult:
    """Upgrade toward ``revision``, stopping before the first contract that must wait (reported, not refused)."""
    url = database.resolve_url(url)
    applied: list[commands.RevisionApplied] = []

    def hear(event: Event) -> None:  # every step committed, by either upgrade below
        if isinstance(event, commands.RevisionApplied):
            applied.append(event)
        reporter(event)

    with database.connect(url) as connection:
        waiting = waiting_contract(connection, pending_scripts(
            script_directory(), recorded_revisions(connection), revision), url)
    if waiting is None:
        try:
            return commands.upgrade(revision=revision, url=url, stdout=stdout, reporter=hear)
        except OldReleaseConnected as refused:
            # Through a transaction pooler a server session carries its last client's name: a session
            # of the release before can show again between the check above and the upgrade's own
            # (which, one revision at a time, may have applied the revisions before the contract).
            waiting = (script_directory().get_revision(refused.revision), str(refused))
    contract, why = waiting
    reporter(ContractDeferred(revision=contract.revision, why=why))
    with database.connect(url) as connection:
        nothing_before = contract.down_revision in recorded_revisions(connection)
    if not nothing_before:
        commands.upgrade(revision=str(contract.down_revision), url=url, stdout=stdout, reporter=hear)
    where = status(url=url)
    return commands.MigrationResult(applied=tuple(applied), current=where.current,
                                    invalid_indexes=where.invalid_indexes)
