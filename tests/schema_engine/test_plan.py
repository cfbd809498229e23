"""``plan``: a revision accepts squawk's findings itself, with reasons that plan shows; the rest are refused."""
from __future__ import annotations

from pathlib import Path

import pytest
import sqlalchemy as sa

from schema_engine import commands, errors, plan
from tests.conftest import HEAD, call
from tests.schema_engine.conftest import add_column_revision

REVISION = '''"""Add an index on calls.summary, for the admin's search by summary."""
from alembic import op

revision = "007_summary_index"
down_revision = "{head}"
branch_labels = None
depends_on = None
{accepted}

def upgrade() -> None:
    op.create_index("ix_calls_summary", "calls", ["summary"])


def downgrade() -> None:
    op.drop_index("ix_calls_summary", table_name="calls")
'''


def add_revision(migrations: Path, accepted: str = "") -> None:
    (migrations / "versions" / "007_summary_index.py").write_text(REVISION.format(head=HEAD, accepted=accepted))


@pytest.fixture
def at_head(pg_db: sa.URL) -> sa.URL:
    commands.upgrade(revision="head", url=pg_db)
    return pg_db


def test_a_finding_the_revision_does_not_accept_is_refused(at_head: sa.URL, scratch_migrations: Path) -> None:
    add_revision(scratch_migrations)
    result = plan.plan(url=at_head)
    assert not result.safe
    (problem,) = result.problems
    assert problem.startswith("revision 007_summary_index: squawk: require-concurrent-index-creation: ")
    assert problem.endswith("; build it with helpers.build_index inside op.get_context().autocommit_block(), as "
                            "revision --autogenerate writes it, or accept it in the revision: ACCEPTED_LINT_FINDINGS = "
                            '{"require-concurrent-index-creation": "why"}')
    assert result.pending[0].accepted_findings == ()


def test_a_finding_the_revision_accepts_is_shown_with_its_reason(at_head: sa.URL, scratch_migrations: Path) -> None:
    add_revision(scratch_migrations, accepted='ACCEPTED_LINT_FINDINGS = {"require-concurrent-index-creation": '
                                              '"calls is small in every deployment (a thousand rows)"}')
    result = plan.plan(url=at_head)
    assert result.safe, result.problems
    assert result.pending[0].accepted_findings == (
        ("require-concurrent-index-creation", "calls is small in every deployment (a thousand rows)"),)
    assert result.as_dict()["pending"][0]["accepted_lint_findings"] == [
        {"rule": "require-concurrent-index-creation", "reason": "calls is small in every deployment (a thousand rows)"}]
    shown = call(at_head, "migrate_schema", "plan", ALEMBIC_SCRIPT_LOCATION=str(scratch_migrations))
    assert shown.returncode == 0, shown.stderr
    assert ("    accepted squawk finding require-concurrent-index-creation: calls is small in every deployment "
            "(a thousand rows)") in shown.stdout.splitlines()


@pytest.mark.parametrize("accepted", ['ACCEPTED_LINT_FINDINGS = {"require-concurrent-index-creation": ""}',
                                      'ACCEPTED_LINT_FINDINGS = ["require-concurrent-index-creation"]'])
def test_an_acceptance_without_its_reason_is_one_line(at_head: sa.URL, scratch_migrations: Path, accepted: str) -> None:
    add_revision(scratch_migrations, accepted=accepted)
    with pytest.raises(errors.InvalidAcceptedFindings,
                       match="^revision 007_summary_index: ACCEPTED_LINT_FINDINGS must"):
        plan.plan(url=at_head)


def test_the_released_revisions_show_their_accepted_findings(pg_db: sa.URL) -> None:
    commands.upgrade(revision="001_langsmith_monitoring", url=pg_db)
    result = plan.plan(url=pg_db)
    accepted = {p.revision: dict(p.accepted_findings) for p in result.pending}
    assert result.safe
    assert set(accepted["002_voice_agent_integration"]) == {
        "disallowed-unique-constraint", "constraint-missing-not-valid", "require-concurrent-index-creation"}
    assert "columns this revision adds" in accepted["003_context_management"]["require-concurrent-index-creation"]


def test_a_pending_merge_revision_is_planned_and_applied(at_head: sa.URL, scratch_migrations: Path) -> None:
    """Two revisions written off the same head, joined by ``migrate_schema merge heads``: plan, then upgrade."""
    for revision, column in (("007_add_region", "region"), ("007_add_channel", "channel")):
        add_column_revision(scratch_migrations, revision=revision, column=column, why="on a branch of its own")
    merge = commands.merge(revisions=["heads"], message="merge region and channel")

    planned = plan.plan(url=at_head)
    assert [rev.revision for rev in planned.pending][-1] == merge
    assert {rev.revision for rev in planned.pending} == {"007_add_region", "007_add_channel", merge}
    assert planned.safe, planned.problems
    shown = call(at_head, "migrate_schema", "plan", ALEMBIC_SCRIPT_LOCATION=str(scratch_migrations))
    assert shown.returncode == 0, shown.stdout + shown.stderr
    assert f"  pending {merge:<30} merge region and channel" in shown.stdout.splitlines()

    assert commands.upgrade(revision="head", url=at_head).current == (merge,)
    assert not plan.plan(url=at_head).pending
