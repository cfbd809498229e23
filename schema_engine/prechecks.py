"""Data pre-checks: what a revision needs of the data, checked before it takes any lock.

A revision declares them beside its code, each a name and a query that must return no row::

    DATA_CHECKS = {
        "no duplicate call_sid": "SELECT call_sid, count(*) FROM calls GROUP BY call_sid HAVING count(*) > 1",
    }

(the unique index it builds would fail on those rows, after minutes of building). ``plan`` runs
them and lists them; an upgrade (``migrate_schema upgrade`` and the plain ``alembic upgrade``, both
through ``env.py``) runs them before the migration lock and refuses with the check's name and a
sample of the rows it found. A check of a revision whose tables or columns an earlier pending
revision adds cannot run yet: it runs just before its own revision (``refuse_unfit_now``).
Each runs in a transaction of its own that is rolled back, under ``MIGRATION_STATEMENT_TIMEOUT``.
"""
from __future__ import annotations

from dataclasses import dataclass

import sqlalchemy as sa
from alembic.script import Script
from django.conf import settings

from schema_engine.errors import DataCheckFailed, InvalidDataChecks, first_line

DATA_CHECKS_NAME = "DATA_CHECKS"
SAMPLE_ROWS = 5


@dataclass(frozen=True)
class DataCheck:
    revision: str
    name: str
    query: str


@dataclass(frozen=True)
class CheckOutcome:
    """A check, run or not yet: the rows it found (a sample), or why it waits for its revision."""

    check: DataCheck
    sample: tuple[tuple[object, ...], ...] = ()
    more: bool = False  # it found more rows than the sample holds
    deferred: str = ""  # non-empty: it runs just before its revision (an earlier pending revision adds what it reads)

    @property
    def failed(self) -> bool:
        return bool(self.sample)

    @property
    def status(self) -> str:
        return "failed" if self.failed else "deferred" if self.deferred else "passed"

    def describe_rows(self) -> str:
        shown = "; ".join(repr(tuple(row)) for row in self.sample)
        return shown + ("; ..." if self.more else "")

    @property
    def problem(self) -> str:
        return (f"revision {self.check.revision}: data check \"{self.check.name}\" found rows it forbids, e.g. "
                f"{self.describe_rows()}: correct the data (or the check) before applying it")


def declared(script: Script) -> list[DataCheck]:
    """Return the checks ``script``'s revision declares (``DATA_CHECKS``), in order."""
    checks = getattr(script.module, DATA_CHECKS_NAME, {})
    if not isinstance(checks, dict) or not all(
            isinstance(name, str) and name.strip() and isinstance(query, str) and query.strip()
            for name, query in checks.items()):
        raise InvalidDataChecks(
            f"revision {script.revision}: {DATA_CHECKS_NAME} must map each check's name to a query that returns no "
            "row when the data is fit, e.g. {\"no duplicate call_sid\": \"SELECT call_sid FROM calls GROUP BY "
            "call_sid HAVING count(*) > 1\"}")
    return [DataCheck(script.revision, name, query) for name, query in checks.items()]


def run_check(connection: sa.Connection, check: DataCheck) -> CheckOutcome:
    """Run one check in its own transaction, rolled back; raise the database's error if the query cannot run."""
    if connection.in_transaction():
        connection.commit()
    transaction = connection.begin()
    try:
        if connection.dialect.name == "postgresql":
            connection.execute(sa.text("SELECT set_config('statement_timeout', :limit, true)"),
                               {"limit": str(settings.MIGRATION_STATEMENT_TIMEOUT)})
            connection.execute(sa.text("SET TRANSACTION READ ONLY"))
        rows = connection.execute(sa.text(check.query)).fetchmany(SAMPLE_ROWS + 1)
    finally:
        transaction.rollback()
    return CheckOutcome(check, sample=tuple(tuple(row) for row in rows[:SAMPLE_ROWS]), more=len(rows) > SAMPLE_ROWS)


def run_pending(connection: sa.Connection, pending: list[Script]) -> list[CheckOutcome]:
    """Run the checks of the ``pending`` revisions (oldest first) on the data as it is now.

    A check of the first pending revision must run: a query that fails is the check's own fault
    (``InvalidDataChecks``). A later revision's check that cannot run is deferred to its revision.
    """
    outcomes = []
    for position, script in enumerate(pending):
        for check in declared(script):
            try:
                outcomes.append(run_check(connection, check))
            except sa.exc.DBAPIError as exc:
                if position == 0:
                    raise InvalidDataChecks(f"revision {check.revision}: data check \"{check.name}\" cannot run: "
                                            f"{first_line(exc)}; correct its query") from exc
                outcomes.append(CheckOutcome(check, deferred=f"runs before {check.revision} is applied: "
                                                             f"{first_line(exc)}"))
    return outcomes


def refuse_unfit(connection: sa.Connection, pending: list[Script]) -> frozenset[str]:
    """Refuse an upgrade through ``pending`` whose data a check forbids; return the revisions whose checks wait.

    Those run just before their own revision (``refuse_unfit_now``), once an earlier one has added what they read.
    """
    outcomes = run_pending(connection, pending)
    refuse_failed(outcomes, left="nothing was changed")
    return frozenset(outcome.check.revision for outcome in outcomes if outcome.deferred)


def refuse_unfit_now(connection: sa.Connection, script: Script) -> None:
    """Run the checks of ``script``, the next revision to apply; raise ``DataCheckFailed`` if one finds rows."""
    refuse_failed([run_check(connection, check) for check in declared(script)],
                  left="the revisions before it stay applied")


def refuse_failed(outcomes: list[CheckOutcome], *, left: str) -> None:
    """Raise ``DataCheckFailed`` for the first check that found rows; ``left`` says what the database was left at."""
    for outcome in outcomes:
        if outcome.failed:
            raise DataCheckFailed(f"{outcome.problem}; {left}", revision=outcome.check.revision,
                                  check=outcome.check.name, sample=outcome.sample)
