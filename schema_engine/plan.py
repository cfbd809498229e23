"""Deploy planning: what ``upgrade head`` would do, and whether it is safe to do now (``migrate_schema plan``).

Safe means: no applied revision has changed since it was applied (``checksums.py``), no pending
revision waits for an unfinished backfill (``gate.py``), no pending contract would drop the old
shape while the release before its expand is connected (``versioning``), no pending revision has a
data pre-check that finds rows (``prechecks.py``), squawk finds nothing unaccepted in the pending
SQL (``lint.py``), no INVALID index is left from a failed build, no streaming replica is further
behind than the upgrade would wait for it (``MIGRATION_REPLICA_WAIT_SECONDS``, ``replicas.py``), a
database that records head matches the models (the drift check), and, with ``rehearse``, the
pending revisions apply to a copy of the schema (``rehearsal.py``). ``scripts/deploy`` stops at
step 2 when it is not.
"""
from __future__ import annotations

import io
import re
from dataclasses import dataclass
from typing import Any

import sqlalchemy as sa
from django.conf import settings

from schema_engine import (
    checksums,
    contracts,
    database,
    gate,
    guard,
    lint,
    prechecks,
    rehearsal,
    replicas,
    versioning,
)
from schema_engine.commands import check, revision_sql
from schema_engine.errors import MultipleHeads, SchemaDrift, alembic_errors
from schema_engine.progress import Reporter, ignore
from schema_engine.state import invalid_index_problem, pending_scripts, script_directory, status, summary


@dataclass(frozen=True)
class PendingRevision:
    revision: str
    doc: str
    requires_backfills: tuple[str, ...]
    lint_findings: tuple[str, ...]  # squawk's, beyond those the revision accepts
    accepted_findings: tuple[tuple[str, str], ...] = ()  # (squawk rule, why): found, and accepted by the revision
    data_checks: tuple[prechecks.CheckOutcome, ...] = ()  # its data pre-checks, run on the data as it is now


@dataclass(frozen=True)
class Plan:
    """What ``upgrade head`` would do, and whether it is safe to do now."""

    current: tuple[str, ...]
    heads: tuple[str, ...]
    pending: tuple[PendingRevision, ...]
    backfill_blockers: tuple[str, ...]
    invalid_indexes: tuple[tuple[str, str], ...]
    replicas: tuple[replicas.Replica, ...] = ()
    replica_wait: float = 0.0  # seconds the upgrade waits for each revision to be replayed
    replicas_unreadable: str = ""  # why this role cannot tell what the replicas replayed (the grant to make)
    changed_revisions: tuple[str, ...] = ()  # applied revisions whose file has changed since (checksums.py)
    drift: str = ""  # at head only: how the database differs from the models (a stamp without the revision?)
    rehearsal: rehearsal.Rehearsal | None = None  # --rehearse: the pending revisions applied to a schema copy
    long_transactions: tuple[tuple[str, guard.Blocker], ...] = ()  # (table a pending revision touches, session)
    long_transaction_seconds: float = 0.0
    contract_blockers: tuple[str, ...] = ()  # a pending contract, while the release before its expand is connected
    # SQLite with pending expand or contract revisions: how they apply there
    sqlite_versions: bool = False
    deferred_contract: str = ""  # defer_contracts: the contract left pending, and why

    @property
    def warnings(self) -> list[str]:
        notes = ["SQLite: no versioned schemas, expand and contract apply in order"] if self.sqlite_versions else []
        notes += [self.deferred_contract] if self.deferred_contract else []
        return notes + [f"{blocker} has held a lock on {table} for longer than MIGRATION_LONG_TRANSACTION_SECONDS "
                f"({self.long_transaction_seconds:g}s), and a pending revision alters {table}: its DDL would wait "
                "for it (lock_timeout, retries); end that transaction or wait for it before upgrading"
                for table, blocker in self.long_transactions]

    @property
    def problems(self) -> list[str]:
        found = [checksums.changed_message(list(self.changed_revisions))] if self.changed_revisions else []
        found += list(self.backfill_blockers)
        found += list(self.contract_blockers)
        found += [f"revision {rev.revision}: squawk: {finding}"
                  for rev in self.pending for finding in rev.lint_findings]
        found += [check.problem for rev in self.pending for check in rev.data_checks if check.failed]
        found += [invalid_index_problem(index, table) for index, table in self.invalid_indexes]
        if self.drift:
            found.append(f"the database records head ({'; '.join(self.current)}) but differs from the models "
                         f"({self.drift}): was a failed revision stamped? stamp the revision the schema really is at "
                         "('manage.py migrate_schema stamp REV'), then 'plan --rehearse'")
        found += self.rehearsal.problems if self.rehearsal else []
        found += [f"replica {replica.name} is {replica.replay_lag:.1f}s behind, longer than the upgrade waits for it "
                  f"(MIGRATION_REPLICA_WAIT_SECONDS {self.replica_wait:g}s): let it catch up first"
                  for replica in self.replicas
                  if self.pending and replica.replay_lag is not None and replica.replay_lag > self.replica_wait]
        found += [self.replicas_unreadable] if self.pending and self.replicas_unreadable else []
        return found

    @property
    def safe(self) -> bool:
        return not self.problems

    def as_dict(self) -> dict[str, Any]:
        return {
            "safe": self.safe,
            "problems": self.problems,
            "current": list(self.current),
            "heads": list(self.heads),
            "pending": [{"revision": r.revision, "doc": r.doc, "requires_backfills": list(r.requires_backfills),
                         "lint_findings": list(r.lint_findings),
                         "accepted_lint_findings": [{"rule": rule, "reason": why} for rule, why in r.accepted_findings],
                         "data_checks": [{"name": c.check.name, "query": c.check.query, "status": c.status,
                                          "sample": [list(map(str, row)) for row in c.sample],
                                          "deferred": c.deferred} for c in r.data_checks]}
                        for r in self.pending],
            "warnings": self.warnings,
            "changed_revisions": list(self.changed_revisions),
            "drift": self.drift,
            "rehearsal": None if self.rehearsal is None else {
                "revisions": [{"revision": r.revision, "seconds": round(r.seconds, 3), "error": r.error}
                              for r in self.rehearsal.revisions],
                "drift": self.rehearsal.drift},
            "backfill_blockers": list(self.backfill_blockers),
            "contract_blockers": list(self.contract_blockers),
            "invalid_indexes": [{"index": i, "table": t} for i, t in self.invalid_indexes],
            "replicas": [{"name": r.name, "state": r.state, "replay_lag_seconds": r.replay_lag,
                          "wal_bytes_not_replayed": r.bytes_behind, "readable": r.readable} for r in self.replicas],
        }


def plan(*, url: sa.URL | str | None = None, rehearse: bool = False, reporter: Reporter = ignore,
         defer_contracts: bool = False) -> Plan:
    """Return the plan for ``upgrade head``: pending revisions, backfills they need, squawk's findings, INVALID indexes.

    With ``rehearse``, also apply the pending revisions to a copy of the schema (``rehearsal.py``);
    ``reporter`` hears of each as it is done (``rehearsal.RevisionRehearsed``). With
    ``defer_contracts``, the plan of ``upgrade head --defer-contracts``: up to the first contract that
    must wait (``contracts.py``), which is a warning, not a problem.
    """
    url = database.resolve_url(url)
    database.require_session(url)  # the upgrade it plans would be refused through a transaction pooler
    state = status(url=url)
    if len(state.heads) > 1:
        raise MultipleHeads("the revision history has multiple heads; merge them with "
                            "'manage.py migrate_schema merge heads -m \"merge heads\"'")
    with alembic_errors(), database.connect(url) as conn:
        scripts = pending_scripts(script_directory(), state.current, "head")
        deferred = contracts.waiting_contract(conn, scripts, url) if defer_contracts else None
        if deferred is not None:
            scripts = scripts[:scripts.index(deferred[0])]
        outcomes = prechecks.run_pending(conn, scripts)
        pending, pending_sql = [], []
        for rev in scripts:
            findings: tuple[str, ...] = ()
            accepted_found: tuple[tuple[str, str], ...] = ()
            if url.get_backend_name() == "postgresql":  # squawk reads PostgreSQL
                sql = revision_sql(rev.revision, rev.down_revision or "base", url=url)
                pending_sql.append(sql)
                found, accepted = lint.lint_sql(sql), lint.accepted_findings(rev)
                findings = tuple(str(f) for f in lint.unaccepted(found, accepted))
                accepted_found = tuple((rule, why) for rule, why in accepted.items() if rule in {f.rule for f in found})
            pending.append(PendingRevision(rev.revision, summary(rev), gate.requires_backfills(rev), findings,
                                           accepted_found,
                                           tuple(o for o in outcomes if o.check.revision == rev.revision)))
        blockers = tuple(why for _rev, _names, why in gate.blockers(scripts, url=url))
        contract_blockers = tuple(why for _rev, why, _sessions in
                                  versioning.contract_refusals(conn, scripts, script_directory()))
        sqlite_versions = url.get_backend_name() == "sqlite" and any(
            versioning.is_expand(rev) or versioning.contracted_by(rev) for rev in scripts)
        streaming = tuple(replicas.replicas(conn))
        unreadable = replicas.unreadable_problem(conn) or ""
        changed = tuple(c.revision for c in checksums.compare(conn) if c.changed)
        touched = {table for table in sa.inspect(conn).get_table_names()
                   if any(re.search(rf"\b{re.escape(table)}\b", sql) for sql in pending_sql)}
        conn.commit()
        held = tuple(guard.long_transactions(conn, touched, settings.MIGRATION_LONG_TRANSACTION_SECONDS))
    drift = ""
    if state.current and not pending:
        try:
            check(url=url, stdout=io.StringIO())  # Alembic's own line is not ours to print
        except SchemaDrift as exc:
            drift = exc.detail
    rehearsed = rehearsal.rehearse(url=url, reporter=reporter) if rehearse else None
    return Plan(current=state.current, heads=state.heads, pending=tuple(pending), backfill_blockers=blockers,
                invalid_indexes=state.invalid_indexes, replicas=streaming, replicas_unreadable=unreadable,
                replica_wait=settings.MIGRATION_REPLICA_WAIT_SECONDS, changed_revisions=changed, drift=drift,
                rehearsal=rehearsed, long_transactions=held,
                long_transaction_seconds=settings.MIGRATION_LONG_TRANSACTION_SECONDS,
                contract_blockers=contract_blockers, sqlite_versions=sqlite_versions,
                deferred_contract=(f"contract {deferred[0].revision} deferred: {deferred[1]}" if deferred else ""))
