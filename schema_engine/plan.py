"""Deploy planning: what ``upgrade head`` would do, and whether it is safe to do now (``migrate_schema plan``).

Safe means: no pending revision waits for an unfinished backfill (``gate.py``), squawk finds
nothing unaccepted in the pending SQL (``lint.py``), no INVALID index is left from a failed
build, and no streaming replica is further behind than the upgrade would wait for it
(``MIGRATION_REPLICA_WAIT_SECONDS``, ``replicas.py``). ``scripts/deploy`` stops at step 2 when it is not.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import sqlalchemy as sa
from django.conf import settings

from schema_engine import database, gate, lint, replicas
from schema_engine.commands import revision_sql
from schema_engine.errors import MultipleHeads, alembic_errors
from schema_engine.state import invalid_index_problem, pending_scripts, script_directory, status, summary


@dataclass(frozen=True)
class PendingRevision:
    revision: str
    doc: str
    requires_backfills: tuple[str, ...]
    lint_findings: tuple[str, ...]  # squawk's, beyond those the revision accepts
    accepted_findings: tuple[tuple[str, str], ...] = ()  # (squawk rule, why): found, and accepted by the revision


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

    @property
    def problems(self) -> list[str]:
        found = list(self.backfill_blockers)
        found += [f"revision {rev.revision}: squawk: {finding}" for rev in self.pending for finding in rev.lint_findings]
        found += [invalid_index_problem(index, table) for index, table in self.invalid_indexes]
        found += [f"replica {replica.name} is {replica.replay_lag:.1f}s behind, longer than the upgrade waits for it "
                  f"(MIGRATION_REPLICA_WAIT_SECONDS {self.replica_wait:g}s): let it catch up first"
                  for replica in self.replicas if self.pending and replica.replay_lag > self.replica_wait]
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
                         "accepted_lint_findings": [{"rule": rule, "reason": why} for rule, why in r.accepted_findings]}
                        for r in self.pending],
            "backfill_blockers": list(self.backfill_blockers),
            "invalid_indexes": [{"index": i, "table": t} for i, t in self.invalid_indexes],
            "replicas": [{"name": r.name, "state": r.state, "replay_lag_seconds": r.replay_lag,
                          "wal_bytes_not_replayed": r.bytes_behind} for r in self.replicas],
        }


def plan(*, url: sa.URL | str | None = None) -> Plan:
    """Return the plan for ``upgrade head``: pending revisions, backfills they need, squawk's findings, INVALID indexes."""
    url = database.resolve_url(url)
    state = status(url=url)
    if len(state.heads) > 1:
        raise MultipleHeads("the revision history has multiple heads; merge them with "
                            "'manage.py migrate_schema merge heads -m \"merge heads\"'")
    with alembic_errors():
        scripts = pending_scripts(script_directory(), state.current, "head")
        pending = []
        for rev in scripts:
            findings: tuple[str, ...] = ()
            accepted_found: tuple[tuple[str, str], ...] = ()
            if url.get_backend_name() == "postgresql":  # squawk reads PostgreSQL
                sql = revision_sql(rev.revision, rev.down_revision or "base", url=url)
                found, accepted = lint.lint_sql(sql), lint.accepted_findings(rev)
                findings = tuple(str(f) for f in lint.unaccepted(found, accepted))
                accepted_found = tuple((rule, why) for rule, why in accepted.items() if rule in {f.rule for f in found})
            pending.append(PendingRevision(rev.revision, summary(rev), gate.requires_backfills(rev), findings,
                                           accepted_found))
        blockers = tuple(why for _rev, _names, why in gate.blockers(scripts, url=url))
    with database.connect(url) as conn:
        streaming = tuple(replicas.replicas(conn))
    return Plan(current=state.current, heads=state.heads, pending=tuple(pending), backfill_blockers=blockers,
                invalid_indexes=state.invalid_indexes, replicas=streaming,
                replica_wait=settings.MIGRATION_REPLICA_WAIT_SECONDS)
