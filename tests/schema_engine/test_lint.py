"""Every revision's offline PostgreSQL SQL, linted by squawk (rules left off for all: ``.squawk.toml``)."""
from __future__ import annotations

import pytest
import sqlalchemy as sa

from schema_engine import commands, lint, state
from tests.conftest import REVISIONS, previous


def script(revision: str):
    return state.script_directory().get_revision(revision)


ACCEPTING = [revision for revision in REVISIONS if lint.accepted_findings(script(revision))]


def offline_sql(revision: str) -> str:
    # Rendering needs the dialect only; nothing connects.
    return commands.revision_sql(revision, previous(revision), url=sa.make_url("postgresql+psycopg://offline@localhost/offline"))


@pytest.mark.parametrize("revision", REVISIONS)
def test_revision_sql_passes_squawk(revision: str) -> None:
    accepted = lint.accepted_findings(script(revision))
    assert [str(f) for f in lint.unaccepted(lint.lint_sql(offline_sql(revision)), accepted)] == []


def test_dropping_an_archive_is_accepted_and_dropping_a_table_is_not() -> None:
    findings = lint.lint_sql("SET lock_timeout = '5s';\nSET statement_timeout = '1min';\n"
                             "DROP TABLE archive_006_backfill_runs;\nDROP TABLE calls;\n")
    assert [f.statement for f in lint.unaccepted(findings, {})] == ["DROP TABLE calls;"]


def test_the_guards_are_in_the_offline_sql() -> None:
    sql = offline_sql(REVISIONS[-1])
    assert sql.index("SET lock_timeout") < sql.index("BEGIN")
    assert "SET statement_timeout" in sql


def test_squawk_finds_what_it_should() -> None:
    """The lint is live: a blocking index build on an existing table is reported."""
    findings = lint.lint_sql("SET lock_timeout = '5s';\nSET statement_timeout = '1min';\n"
                             "CREATE INDEX ix_calls_summary ON calls (summary);\n")
    assert [f.rule for f in findings] == ["require-concurrent-index-creation"]


def test_the_released_revisions_that_predate_the_check_accept_their_findings_themselves() -> None:
    assert ACCEPTING == ["002_voice_agent_integration", "003_context_management"]


@pytest.mark.parametrize("revision", ACCEPTING)
def test_every_accepted_finding_still_occurs(revision: str) -> None:
    """An exception nobody needs any more is removed, not left to hide a new finding."""
    rules = {f.rule for f in lint.lint_sql(offline_sql(revision))}
    assert set(lint.accepted_findings(script(revision))) <= rules
