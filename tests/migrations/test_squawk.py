"""Every revision's offline PostgreSQL SQL, linted by squawk (rules left off for all: ``.squawk.toml``)."""
from __future__ import annotations

import io

import pytest
import sqlalchemy as sa

from reautomation import lint, schema
from tests.migrations.conftest import REVISIONS, previous

# Findings accepted in revisions released before this check existed, each with why. A new
# revision gets none: fix what squawk finds, or argue for an entry here in review.
RELEASED_EXCEPTIONS: dict[str, dict[str, str]] = {
    "002_voice_agent_integration": {
        # The table dropped is archive_002_calls, emptied back into calls in the same transaction.
        "ban-drop-table": "drops the archive a downgrade made, after restoring its rows",
        # uq_calls_call_sid and ix_calls_current_agent are on columns this revision adds (all NULL),
        # built under the revision's lock on calls; at 400k calls that is a fraction of a second
        # (bench/migration_timing.py, bench/writer_stall.py).
        "disallowed-unique-constraint": "unique constraint on a column added in the same revision",
        "constraint-missing-not-valid": "the same unique constraint",
        "require-concurrent-index-creation": "ix_calls_current_agent, on a column added in the same revision",
    },
    "003_context_management": {
        "ban-drop-table": "drops archive_003_* after restoring their rows",
        "require-concurrent-index-creation": "ix_calls_context_pruning, on columns added in the same revision",
    },
}


def offline_sql(revision: str) -> str:
    out = io.StringIO()
    # Rendering needs the dialect only; nothing connects.
    schema.upgrade(revision=f"{previous(revision)}:{revision}", sql=True,
                   url=sa.make_url("postgresql+psycopg://offline@localhost/offline"), stdout=out)
    return out.getvalue()


@pytest.mark.parametrize("revision", REVISIONS)
def test_revision_sql_passes_squawk(revision: str) -> None:
    findings = lint.lint_sql(offline_sql(revision))
    accepted = RELEASED_EXCEPTIONS.get(revision, {})
    unexpected = [str(f) for f in findings if f.rule not in accepted]
    assert unexpected == []


def test_the_guards_are_in_the_offline_sql() -> None:
    sql = offline_sql(REVISIONS[-1])
    assert sql.index("SET lock_timeout") < sql.index("BEGIN")
    assert "SET statement_timeout" in sql


def test_squawk_finds_what_it_should() -> None:
    """The lint is live: a blocking index build on an existing table is reported."""
    findings = lint.lint_sql("SET lock_timeout = '5s';\nSET statement_timeout = '1min';\n"
                             "CREATE INDEX ix_calls_summary ON calls (summary);\n")
    assert [f.rule for f in findings] == ["require-concurrent-index-creation"]


@pytest.mark.parametrize("revision", sorted(RELEASED_EXCEPTIONS))
def test_every_accepted_finding_still_occurs(revision: str) -> None:
    """An exception nobody needs any more is removed, not left to hide a new finding."""
    rules = {f.rule for f in lint.lint_sql(offline_sql(revision))}
    assert set(RELEASED_EXCEPTIONS[revision]) <= rules
