"""Add performance indexes for the admin and dashboard queries, the backfill, and metrics.

Revision ID: 004_performance_indexes
Revises: 003_context_management
Create Date: 2026-11-24

Each index and the query it serves (the admin's list pages are the dashboard):

- ix_calls_status_created_at (status, created_at) INCLUDE (tier, total_cost) [covering]:
  the call list filtered by status, newest first,
  ``SELECT ... FROM calls WHERE status = 'failed' ORDER BY created_at DESC LIMIT 100``,
  and cost by status over a window, index-only:
  ``SELECT tier, sum(total_cost) FROM calls WHERE status = 'completed' AND created_at >= ? GROUP BY tier``.
- ix_calls_tier_created_at (tier, created_at): the call list filtered by tier,
  ``WHERE tier = 'tier2' ORDER BY created_at DESC LIMIT 100``.
- ix_calls_pruned_created_at (created_at) WHERE context_pruned [partial]: the call list
  filtered to pruned calls (a small share), ``WHERE context_pruned ORDER BY created_at DESC LIMIT 100``.
- ix_calls_context_pending (id) WHERE total_context_tokens IS NULL [partial]: the backfill's
  keyset scan for calls still to compute, ``WHERE total_context_tokens IS NULL AND id > ? ORDER BY id LIMIT ?``.
- ix_conversation_history_tokens_pending (id) WHERE token_count IS NULL [partial]: the same
  scan for messages, ``WHERE token_count IS NULL AND id > ? ORDER BY id LIMIT ?``.
- ix_performance_metrics_recorded_at, ix_system_metrics_recorded_at (recorded_at) [BRIN on
  PostgreSQL, b-tree on SQLite]: the metrics charts over a time window,
  ``WHERE recorded_at >= now() - interval '24 hours'``; rows arrive in time order, so a BRIN
  index is a few pages where a b-tree would be gigabytes.

On PostgreSQL the indexes are built CONCURRENTLY, outside a transaction, so writers are not
blocked; a rerun after a failure keeps the valid ones and rebuilds any left INVALID.
SQLite has no INCLUDE or BRIN: it gets plain b-trees.
"""
from __future__ import annotations

from typing import Sequence

import sqlalchemy as sa
from alembic import op

from migrations_alembic.helpers import build_index, drop_index

revision: str = "004_performance_indexes"
down_revision: str | Sequence[str] | None = "003_context_management"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

# (name, table, columns, dialect options)
INDEXES: list[tuple[str, str, list[str], dict[str, object]]] = [
    ("ix_calls_status_created_at", "calls", ["status", "created_at"],
     {"postgresql_include": ["tier", "total_cost"]}),
    ("ix_calls_tier_created_at", "calls", ["tier", "created_at"], {}),
    ("ix_calls_pruned_created_at", "calls", ["created_at"],
     {"postgresql_where": sa.text("context_pruned"), "sqlite_where": sa.text("context_pruned")}),
    ("ix_calls_context_pending", "calls", ["id"],
     {"postgresql_where": sa.text("total_context_tokens IS NULL"),
      "sqlite_where": sa.text("total_context_tokens IS NULL")}),
    ("ix_conversation_history_tokens_pending", "conversation_history", ["id"],
     {"postgresql_where": sa.text("token_count IS NULL"), "sqlite_where": sa.text("token_count IS NULL")}),
    ("ix_performance_metrics_recorded_at", "performance_metrics", ["recorded_at"], {"postgresql_using": "brin"}),
    ("ix_system_metrics_recorded_at", "system_metrics", ["recorded_at"], {"postgresql_using": "brin"}),
]


def upgrade() -> None:
    with op.get_context().autocommit_block():
        for name, table, columns, options in INDEXES:
            build_index(name, table, columns, **options)


def downgrade() -> None:
    with op.get_context().autocommit_block():
        for name, table, _columns, _options in reversed(INDEXES):
            drop_index(name, table)
