"""Add the operator's brake to backfill runs (who paused or cancelled a run, and when) and their batch splits.

Revision ID: 006_backfill_controls
Revises: 005_backfill_runs
Create Date: 2026-12-01

``manage.py backfill_context --pause/--resume/--cancel`` and the admin's buttons change a run's
status to ``paused`` or ``cancelled`` (backfill_runs.status is text: the new states need no
change to it); every worker on every host sees it at its next batch and stops. A paused run
shows who paused it and when (paused_by, paused_at) until it is resumed from its cursor; a
cancelled one who cancelled it (cancelled_by; finished_at says when). batch_splits counts the
batches a run halved and retried after a statement timeout, a deadlock or a lock timeout.
Nullable columns, or a constant default: adding them rewrites nothing. Downgrade keeps their values in archive_006_backfill_runs;
the next upgrade restores them.
"""
from __future__ import annotations

from typing import Sequence

import sqlalchemy as sa
from alembic import op

from migrations_alembic.helpers import TIMESTAMP, archive_columns, restore_columns

revision: str = "006_backfill_controls"
down_revision: str | Sequence[str] | None = "005_backfill_runs"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

ARCHIVE = "archive_006_backfill_runs"


def control_columns() -> list[sa.Column]:
    return [
        sa.Column("paused_by", sa.String(150), nullable=True),
        sa.Column("paused_at", TIMESTAMP, nullable=True),
        sa.Column("cancelled_by", sa.String(150), nullable=True),
        sa.Column("batch_splits", sa.Integer(), server_default=sa.text("0"), nullable=False),
    ]


def upgrade() -> None:
    for column in control_columns():  # ADD COLUMN needs no batch rebuild on SQLite
        op.add_column("backfill_runs", column)
    restore_columns("backfill_runs", control_columns(), archive=ARCHIVE)


def downgrade() -> None:
    archive_columns("backfill_runs", control_columns(), archive=ARCHIVE,
                    where="paused_by IS NOT NULL OR paused_at IS NOT NULL OR cancelled_by IS NOT NULL "
                          "OR batch_splits <> 0")
    with op.batch_alter_table("backfill_runs") as batch:
        for column in reversed(control_columns()):
            batch.drop_column(column.name)
