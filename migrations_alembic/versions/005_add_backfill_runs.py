"""Add backfill_runs and backfill_batches: the record and the coordination of backfill_context.

Revision ID: 005_backfill_runs
Revises: 004_performance_indexes
Create Date: 2026-11-24

``manage.py backfill_context`` fills the fields revision 003 added. Each run is recorded in
backfill_runs (status, counts, cursor, heartbeat, error) for operators and the admin; a partial
unique index allows one running run per backfill, which other workers join.
backfill_batches holds the batches handed out and not yet committed, so cooperating workers
never process a batch twice and a killed worker's batch is redone by the next run.
ix_backfill_runs_backfill_started_at serves the admin's list of runs
(WHERE backfill = ? ORDER BY started_at DESC) and the look-up of the running run.
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

revision: str = "005_backfill_runs"
down_revision: str | Sequence[str] | None = "004_performance_indexes"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

# A downgrade keeps the rows of each table it drops in archive_005_<table>; the next upgrade puts them back.
ARCHIVE_PREFIX = "archive_005_"


def upgrade() -> None:
    restore_rows(op.create_table(
        "backfill_runs",
        id_column(),
        sa.Column("backfill", sa.String(32), nullable=False),
        sa.Column("status", sa.String(16), server_default="running", nullable=False),
        sa.Column("recompute", sa.Boolean(), server_default=sa.false(), nullable=False),
        sa.Column("batch_size", sa.Integer(), server_default=sa.text("500"), nullable=False),
        now_column("started_at"),
        now_column("heartbeat_at"),
        sa.Column("finished_at", TIMESTAMP, nullable=True),
        sa.Column("rows_total", sa.BigInteger(), nullable=True),
        sa.Column("rows_scanned", sa.BigInteger(), server_default=sa.text("0"), nullable=False),
        sa.Column("rows_changed", sa.BigInteger(), server_default=sa.text("0"), nullable=False),
        sa.Column("cursor", sa.BigInteger(), server_default=sa.text("0"), nullable=False),
        sa.Column("resumed_from_id", BIGINT, nullable=True),
        sa.Column("host", sa.String(255), server_default="", nullable=False),
        sa.Column("pid", sa.Integer(), nullable=True),
        sa.Column("error", sa.Text(), nullable=True),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_backfill_runs")),
        foreign_key("backfill_runs", "resumed_from_id", "backfill_runs", ondelete="SET NULL"),
    ), archive_prefix=ARCHIVE_PREFIX)
    op.create_index(op.f("ix_backfill_runs_resumed_from_id"), "backfill_runs", ["resumed_from_id"])
    op.create_index("ix_backfill_runs_backfill_started_at", "backfill_runs", ["backfill", "started_at"])
    op.create_index(
        "uq_backfill_runs_one_running",
        "backfill_runs",
        ["backfill"],
        unique=True,
        postgresql_where=sa.text("status = 'running'"),
        sqlite_where=sa.text("status = 'running'"),
    )
    restore_rows(op.create_table(
        "backfill_batches",
        id_column(),
        sa.Column("run_id", BIGINT, nullable=False),
        sa.Column("backfill", sa.String(32), nullable=False),
        sa.Column("lo", sa.BigInteger(), nullable=False),
        sa.Column("hi", sa.BigInteger(), nullable=False),
        now_column("claimed_at"),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_backfill_batches")),
        foreign_key("backfill_batches", "run_id", "backfill_runs", ondelete="CASCADE"),
    ), archive_prefix=ARCHIVE_PREFIX)
    op.create_index(op.f("ix_backfill_batches_run_id"), "backfill_batches", ["run_id"])
    op.create_index("ix_backfill_batches_backfill_id", "backfill_batches", ["backfill", "id"])


def downgrade() -> None:
    drop_table_keeping_rows("backfill_batches", archive_prefix=ARCHIVE_PREFIX)
    drop_table_keeping_rows("backfill_runs", archive_prefix=ARCHIVE_PREFIX)
