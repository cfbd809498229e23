"""Add performance indexes for the admin and dashboard queries, the backfill, and metrics.

Revision ID: 004_performance_indexes
Revises: 003_context_management
Create Date: 2026-11-24

Each index and the queries it serves (the admin's list pages are the dashboard);
tests/migrations_alembic/test_index_effectiveness.py runs EXPLAIN on each query quoted here:

- ix_calls_created_at_covering (created_at) INCLUDE (status, tier, total_cost) [covering]:
  the dashboard's totals over a recent window, answered from the index alone,
  ``SELECT status, tier, count(*), sum(total_cost) FROM calls WHERE created_at >= now() - interval '7 days' GROUP BY status, tier``.
  (SQLite has no INCLUDE: there the columns are trailing key columns, which cover the same.)
- ix_calls_status_created_at (status, created_at): the admin's row count for the call list
  filtered by status within a date drill-down, answered from the index alone,
  ``SELECT count(*) FROM calls WHERE status = 'failed' AND created_at >= now() - interval '30 days'``.
  (The list's first page itself is read newest-first from ix_calls_created_at: calls are
  appended in time order, so the planner rightly prefers that one for LIMIT queries.)
- ix_calls_tier_created_at (tier, created_at): the same count for the tier filter,
  ``SELECT count(*) FROM calls WHERE tier = 'tier3' AND created_at >= now() - interval '30 days'``.
- ix_calls_pruned_created_at (created_at) WHERE context_pruned [partial]: the call list filtered
  to pruned calls (a small share),
  ``SELECT id, phone_number, pruning_count, created_at FROM calls WHERE context_pruned ORDER BY created_at DESC LIMIT 100``.
- ix_calls_context_pending (id) WHERE total_context_tokens IS NULL [partial]: the backfill's
  keyset scan for calls still to compute,
  ``SELECT id FROM calls WHERE total_context_tokens IS NULL AND id > 0 ORDER BY id LIMIT 500``.
- ix_conversation_history_tokens_pending (id) WHERE token_count IS NULL [partial]: the same
  scan for messages,
  ``SELECT id, content FROM conversation_history WHERE token_count IS NULL AND id > 0 ORDER BY id LIMIT 500``.
- ix_performance_metrics_recorded_at (recorded_at) [BRIN on PostgreSQL, b-tree on SQLite]:
  the metrics chart over a time window,
  ``SELECT metric_name, date_trunc('hour', recorded_at) AS hour, avg(value) FROM performance_metrics WHERE recorded_at >= now() - interval '24 hours' GROUP BY 1, 2``.
- ix_system_metrics_recorded_at (recorded_at) [BRIN on PostgreSQL, b-tree on SQLite]: the same for hosts,
  ``SELECT metric_name, date_trunc('hour', recorded_at) AS hour, avg(value) FROM system_metrics WHERE recorded_at >= now() - interval '24 hours' GROUP BY 1, 2``.
  Metric rows arrive in time order, so a BRIN index is a few pages where a b-tree would be
  hundreds of megabytes.

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
    ("ix_calls_created_at_covering", "calls", ["created_at"], {"postgresql_include": ["status", "tier", "total_cost"]}),
    ("ix_calls_status_created_at", "calls", ["status", "created_at"], {}),
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
