"""Add the base tables: contacts, calls, conversation_history, call_notes.

Revision ID: 26a6cb1543c8
Revises: 000_django_framework
Create Date: 2026-11-24

The core of the voice-agent system: the leads (contacts), each call placed to one, the call's
conversation turn by turn, and notes on calls. Base indexes serve the primary lookups:
a contact or calls by phone number, a call's conversation in order
(WHERE call_id = ? ORDER BY turn_index, created_at, id), recent calls by time and by status.
Every NOT NULL column a writer may omit has a server default, so plain SQL inserts such as
INSERT INTO calls (phone_number, status, tier, created_at) VALUES (...) are valid.
"""
from __future__ import annotations

from typing import Sequence

import sqlalchemy as sa
from alembic import op

from migrations_alembic.helpers import (
    BIGINT,
    TIMESTAMP,
    drop_table_keeping_rows,
    foreign_key,
    id_column,
    now_column,
    restore_rows,
)

revision: str = "26a6cb1543c8"
down_revision: str | Sequence[str] | None = "000_django_framework"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

# A downgrade keeps the rows of each table it drops in archive_base_<table>; the next upgrade puts them back.
ARCHIVE_PREFIX = "archive_base_"


def upgrade() -> None:
    restore_rows(op.create_table(
        "contacts",
        id_column(),
        sa.Column("first_name", sa.String(100), server_default="", nullable=False),
        sa.Column("last_name", sa.String(100), server_default="", nullable=False),
        sa.Column("phone_number", sa.String(32), nullable=False),
        sa.Column("email", sa.String(254), nullable=True),
        sa.Column("street_address", sa.String(255), nullable=True),
        sa.Column("city", sa.String(100), nullable=True),
        sa.Column("state", sa.String(32), nullable=True),
        sa.Column("postal_code", sa.String(16), nullable=True),
        sa.Column("lead_source", sa.String(64), nullable=True),
        sa.Column("lead_status", sa.String(32), server_default="new", nullable=False),
        sa.Column("do_not_call", sa.Boolean(), server_default=sa.false(), nullable=False),
        now_column("created_at"),
        now_column("updated_at"),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_contacts")),
        sa.UniqueConstraint("phone_number", name=op.f("uq_contacts_phone_number")),
    ), archive_prefix=ARCHIVE_PREFIX)
    op.create_index("ix_contacts_name", "contacts", ["last_name", "first_name"])

    restore_rows(op.create_table(
        "calls",
        id_column(),
        sa.Column("contact_id", BIGINT, nullable=True),
        sa.Column("phone_number", sa.String(32), nullable=False),
        sa.Column("direction", sa.String(16), server_default="outbound", nullable=False),
        sa.Column("status", sa.String(32), server_default="queued", nullable=False),
        sa.Column("tier", sa.String(16), server_default="tier1", nullable=False),
        now_column("created_at"),
        now_column("updated_at"),
        sa.Column("started_at", TIMESTAMP, nullable=True),
        sa.Column("ended_at", TIMESTAMP, nullable=True),
        sa.Column("duration_seconds", sa.Integer(), nullable=True),
        sa.Column("outcome", sa.String(64), nullable=True),
        sa.Column("total_cost", sa.Numeric(10, 4), server_default=sa.text("0"), nullable=False),
        sa.Column("summary", sa.Text(), nullable=True),
        sa.Column("error_message", sa.Text(), nullable=True),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_calls")),
        foreign_key("calls", "contact_id", "contacts", ondelete="SET NULL"),
    ), archive_prefix=ARCHIVE_PREFIX)
    op.create_index(op.f("ix_calls_contact_id"), "calls", ["contact_id"])
    op.create_index(op.f("ix_calls_phone_number"), "calls", ["phone_number"])
    op.create_index(op.f("ix_calls_created_at"), "calls", ["created_at"])
    op.create_index("ix_calls_status", "calls", ["status"])

    restore_rows(op.create_table(
        "conversation_history",
        id_column(),
        sa.Column("call_id", BIGINT, nullable=False),
        sa.Column("role", sa.String(16), nullable=False),
        sa.Column("content", sa.Text(), nullable=False),
        sa.Column("turn_index", sa.Integer(), nullable=True),
        now_column("created_at"),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_conversation_history")),
        foreign_key("conversation_history", "call_id", "calls", ondelete="CASCADE"),
        sa.CheckConstraint(
            "role IN ('system', 'user', 'assistant', 'tool')", name=op.f("ck_conversation_history_role")
        ),
    ), archive_prefix=ARCHIVE_PREFIX)
    op.create_index(
        "ix_conversation_history_call_order", "conversation_history", ["call_id", "turn_index", "created_at", "id"]
    )
    op.create_index("ix_conversation_history_created_at", "conversation_history", ["created_at"])

    restore_rows(op.create_table(
        "call_notes",
        id_column(),
        sa.Column("call_id", BIGINT, nullable=False),
        sa.Column("author", sa.String(100), server_default="system", nullable=False),
        sa.Column("note_type", sa.String(32), server_default="general", nullable=False),
        sa.Column("body", sa.Text(), nullable=False),
        now_column("created_at"),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_call_notes")),
        foreign_key("call_notes", "call_id", "calls", ondelete="CASCADE"),
    ), archive_prefix=ARCHIVE_PREFIX)
    op.create_index(op.f("ix_call_notes_call_id"), "call_notes", ["call_id"])


def downgrade() -> None:
    drop_table_keeping_rows("call_notes", archive_prefix=ARCHIVE_PREFIX)
    drop_table_keeping_rows("conversation_history", archive_prefix=ARCHIVE_PREFIX)
    drop_table_keeping_rows("calls", archive_prefix=ARCHIVE_PREFIX)
    drop_table_keeping_rows("contacts", archive_prefix=ARCHIVE_PREFIX)
