"""Add LangSmith monitoring tables: workflow_traces, agent_executions, performance_metrics, system_metrics.

Revision ID: 001_langsmith_monitoring
Revises: 26a6cb1543c8
Create Date: 2026-11-24

Agent observability. A workflow trace is one LangSmith run (usually for one call, found by its
trace id); its agent executions are the steps inside it. Performance and system metrics are
append-only time series, read by metric name over a time window
(WHERE metric_name = ? AND recorded_at >= ? ORDER BY recorded_at).
"""
from __future__ import annotations

from typing import Sequence

import sqlalchemy as sa
from alembic import op

from migrations_alembic.helpers import (
    BIGINT,
    JSON,
    TIMESTAMP,
    drop_table_keeping_rows,
    foreign_key,
    id_column,
    now_column,
    restore_rows,
)

revision: str = "001_langsmith_monitoring"
down_revision: str | Sequence[str] | None = "26a6cb1543c8"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

# A downgrade keeps the rows of each table it drops in archive_001_<table>; the next upgrade puts them back.
ARCHIVE_PREFIX = "archive_001_"


def upgrade() -> None:
    restore_rows(op.create_table(
        "workflow_traces",
        id_column(),
        sa.Column("trace_id", sa.String(64), nullable=False),
        sa.Column("call_id", BIGINT, nullable=True),
        sa.Column("workflow_name", sa.String(100), nullable=False),
        sa.Column("status", sa.String(32), server_default="running", nullable=False),
        now_column("started_at"),
        sa.Column("ended_at", TIMESTAMP, nullable=True),
        sa.Column("duration_ms", sa.Integer(), nullable=True),
        sa.Column("total_tokens", sa.Integer(), server_default=sa.text("0"), nullable=False),
        sa.Column("total_cost", sa.Numeric(10, 4), server_default=sa.text("0"), nullable=False),
        sa.Column("error", sa.Text(), nullable=True),
        sa.Column("metadata", JSON, nullable=True),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_workflow_traces")),
        foreign_key("workflow_traces", "call_id", "calls", ondelete="SET NULL"),
        sa.UniqueConstraint("trace_id", name=op.f("uq_workflow_traces_trace_id")),
    ), archive_prefix=ARCHIVE_PREFIX)
    op.create_index(op.f("ix_workflow_traces_call_id"), "workflow_traces", ["call_id"])
    op.create_index("ix_workflow_traces_started_at", "workflow_traces", ["started_at"])
    op.create_index("ix_workflow_traces_status_started_at", "workflow_traces", ["status", "started_at"])

    restore_rows(op.create_table(
        "agent_executions",
        id_column(),
        sa.Column("trace_id", BIGINT, nullable=False),
        sa.Column("agent_name", sa.String(64), nullable=False),
        sa.Column("status", sa.String(32), server_default="success", nullable=False),
        sa.Column("model_name", sa.String(64), nullable=True),
        sa.Column("input_tokens", sa.Integer(), server_default=sa.text("0"), nullable=False),
        sa.Column("output_tokens", sa.Integer(), server_default=sa.text("0"), nullable=False),
        sa.Column("latency_ms", sa.Integer(), nullable=True),
        sa.Column("cost", sa.Numeric(10, 6), server_default=sa.text("0"), nullable=False),
        sa.Column("error", sa.Text(), nullable=True),
        now_column("started_at"),
        sa.Column("ended_at", TIMESTAMP, nullable=True),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_agent_executions")),
        foreign_key("agent_executions", "trace_id", "workflow_traces", ondelete="CASCADE"),
    ), archive_prefix=ARCHIVE_PREFIX)
    op.create_index(op.f("ix_agent_executions_trace_id"), "agent_executions", ["trace_id"])
    op.create_index("ix_agent_executions_agent_started_at", "agent_executions", ["agent_name", "started_at"])

    restore_rows(op.create_table(
        "performance_metrics",
        id_column(),
        sa.Column("metric_name", sa.String(100), nullable=False),
        sa.Column("value", sa.Double(), nullable=False),
        sa.Column("unit", sa.String(32), nullable=True),
        sa.Column("agent_name", sa.String(64), nullable=True),
        sa.Column("call_id", BIGINT, nullable=True),
        now_column("recorded_at"),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_performance_metrics")),
        foreign_key("performance_metrics", "call_id", "calls", ondelete="SET NULL"),
    ), archive_prefix=ARCHIVE_PREFIX)
    op.create_index(op.f("ix_performance_metrics_call_id"), "performance_metrics", ["call_id"])
    op.create_index(
        "ix_performance_metrics_name_recorded_at", "performance_metrics", ["metric_name", "recorded_at"]
    )

    restore_rows(op.create_table(
        "system_metrics",
        id_column(),
        sa.Column("metric_name", sa.String(100), nullable=False),
        sa.Column("value", sa.Double(), nullable=False),
        sa.Column("host", sa.String(100), server_default="", nullable=False),
        now_column("recorded_at"),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_system_metrics")),
    ), archive_prefix=ARCHIVE_PREFIX)
    op.create_index("ix_system_metrics_name_recorded_at", "system_metrics", ["metric_name", "recorded_at"])


def downgrade() -> None:
    drop_table_keeping_rows("system_metrics", archive_prefix=ARCHIVE_PREFIX)
    drop_table_keeping_rows("performance_metrics", archive_prefix=ARCHIVE_PREFIX)
    drop_table_keeping_rows("agent_executions", archive_prefix=ARCHIVE_PREFIX)
    drop_table_keeping_rows("workflow_traces", archive_prefix=ARCHIVE_PREFIX)
