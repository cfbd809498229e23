"""Add context management fields to calls and conversation_history.

Revision ID: 003_context_management
Revises: 002_voice_agent_integration
Create Date: 2026-11-24

calls.context_pruned / pruning_count record what the context policy did on the call;
calls.total_context_tokens is the whole conversation's size in the chat format, and
conversation_history.token_count / importance are per message (calls/context_policy.py and
calls/tokens.py define them). The counts are NULL until computed: existing data needs
``manage.py backfill_context`` after this revision. ix_calls_context_pruning serves the
context analytics (WHERE context_pruned GROUP BY pruning_count).

Downgrade keeps the computed values in archive_003_calls and archive_003_conversation_history
before dropping the columns; the next upgrade restores them, so a rollback and re-deploy
does not force a new backfill.
"""
from __future__ import annotations

from typing import Sequence

import sqlalchemy as sa
from alembic import op

from migrations_alembic.helpers import archive_columns, restore_columns

revision: str = "003_context_management"
down_revision: str | Sequence[str] | None = "002_voice_agent_integration"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

CALLS_ARCHIVE = "archive_003_calls"
MESSAGES_ARCHIVE = "archive_003_conversation_history"

# squawk's findings this revision accepts, each with why (migrate_schema plan shows them).
ACCEPTED_LINT_FINDINGS = {
    "require-concurrent-index-creation": "ix_calls_context_pruning is on columns this revision adds",
}


def call_columns() -> list[sa.Column]:
    return [
        sa.Column("context_pruned", sa.Boolean(), server_default=sa.false(), nullable=False),
        sa.Column("pruning_count", sa.Integer(), server_default=sa.text("0"), nullable=False),
        sa.Column("total_context_tokens", sa.Integer(), nullable=True),
    ]


def message_columns() -> list[sa.Column]:
    return [
        sa.Column("importance", sa.Double(), nullable=True),
        sa.Column("token_count", sa.Integer(), nullable=True),
    ]


def upgrade() -> None:
    for table, columns, archive in (
        ("calls", call_columns(), CALLS_ARCHIVE),
        ("conversation_history", message_columns(), MESSAGES_ARCHIVE),
    ):
        for column in columns:  # ADD COLUMN needs no batch rebuild on SQLite, so --sql works there too
            op.add_column(table, column)
        restore_columns(table, columns, archive=archive)
    op.create_index("ix_calls_context_pruning", "calls", ["context_pruned", "pruning_count"])


def downgrade() -> None:
    op.drop_index("ix_calls_context_pruning", table_name="calls")
    archive_columns(
        "calls",
        call_columns(),
        archive=CALLS_ARCHIVE,
        where="total_context_tokens IS NOT NULL OR context_pruned OR pruning_count <> 0",
    )
    archive_columns(
        "conversation_history",
        message_columns(),
        archive=MESSAGES_ARCHIVE,
        where="token_count IS NOT NULL OR importance IS NOT NULL",
    )
    for table, columns in (("conversation_history", message_columns()), ("calls", call_columns())):
        with op.batch_alter_table(table) as batch:
            for column in reversed(columns):
                batch.drop_column(column.name)
