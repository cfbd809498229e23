"""Each index of revision 004 is used by PostgreSQL's planner for the queries its docstring names.

The queries are read from the revision's docstring, so the documentation and this test cannot
drift apart. The tables are seeded at a realistic size and shape (a few percent of failed,
tier-3, pruned or not-yet-counted rows; metrics in time order), then VACUUM ANALYZEd.
"""
from __future__ import annotations

import importlib
import re
from typing import Iterator

import pytest
import sqlalchemy as sa

from schema_engine import commands, database, scratch

CALLS = 200_000
MESSAGES = 400_000
METRICS = 500_000
REVISION_004 = importlib.import_module("migrations_alembic.versions.004_add_performance_indexes")


def documented_queries() -> list[tuple[str, str]]:
    """Return (index name, query) for each query quoted under each index in 004's docstring."""
    pairs = []
    for block in re.split(r"\n- ", REVISION_004.__doc__)[1:]:
        index = block.split()[0]
        for query in re.findall(r"``(SELECT .+?)``", block, flags=re.S):
            pairs.append((index, " ".join(query.split())))
    return pairs


def test_every_index_of_004_documents_a_query() -> None:
    documented = {index for index, _ in documented_queries()}
    assert documented == {name for name, *_ in REVISION_004.INDEXES}


SEED = [
    f"""INSERT INTO calls (phone_number, status, tier, created_at, context_pruned, pruning_count,
                           total_context_tokens, total_cost)
        SELECT '+1555' || lpad(g::text, 7, '0'),
               CASE WHEN r1 < 0.70 THEN 'completed' WHEN r1 < 0.80 THEN 'no_answer' WHEN r1 < 0.88 THEN 'voicemail'
                    WHEN r1 < 0.93 THEN 'failed' WHEN r1 < 0.97 THEN 'busy' ELSE 'canceled' END,
               CASE WHEN r2 < 0.70 THEN 'tier1' WHEN r2 < 0.95 THEN 'tier2' ELSE 'tier3' END,
               now() - interval '90 days' + g * interval '90 days' / {CALLS},
               r3 < 0.03, CASE WHEN r3 < 0.03 THEN 1 + (r3 * 100)::int ELSE 0 END,
               CASE WHEN r3 < 0.99 THEN 400 + (r1 * 4000)::int END, round((r1 * 2)::numeric, 4)
        FROM (SELECT g, random() AS r1, random() AS r2, random() AS r3 FROM generate_series(1, {CALLS}) g) s""",
    f"""INSERT INTO conversation_history (call_id, role, content, turn_index, created_at, token_count, importance)
        SELECT 1 + (g % {CALLS}), CASE WHEN g % 2 = 0 THEN 'user' ELSE 'assistant' END,
               'Is the house on Maple Street still available?', g / {CALLS},
               now() - interval '90 days' + (g % {CALLS}) * interval '90 days' / {CALLS},
               CASE WHEN random() < 0.98 THEN 12 END, 0.5
        FROM generate_series(1, {MESSAGES}) g""",
    f"""INSERT INTO performance_metrics (metric_name, value, unit, recorded_at)
        SELECT (ARRAY['response_latency_ms', 'call_cost_usd', 'tokens_per_call'])[1 + g % 3], random() * 1000, 'ms',
               now() - interval '90 days' + g * interval '90 days' / {METRICS}
        FROM generate_series(1, {METRICS}) g""",
    f"""INSERT INTO system_metrics (metric_name, value, host, recorded_at)
        SELECT (ARRAY['cpu_percent', 'active_calls'])[1 + g % 2], random() * 100, 'voice-' || (g % 4),
               now() - interval '90 days' + g * interval '90 days' / {METRICS}
        FROM generate_series(1, {METRICS}) g""",
]


@pytest.fixture(scope="module")
def seeded_postgres(postgres_admin: sa.Engine) -> Iterator[sa.Engine]:
    """A PostgreSQL database at head with realistic volumes, analyzed."""
    with scratch.scratch_database(postgres_admin, "test_reautomation_index_effectiveness") as url:
        commands.upgrade(revision="head", url=url)
        engine = database.create_engine(url)
        with engine.begin() as conn:
            for statement in SEED:
                conn.execute(sa.text(statement))
        with engine.connect().execution_options(isolation_level="AUTOCOMMIT") as conn:
            conn.execute(sa.text("VACUUM ANALYZE"))
        yield engine
        engine.dispose()


@pytest.mark.parametrize(("index", "query"), documented_queries(), ids=lambda v: v if v.startswith("ix_") else "")
def test_planner_uses_the_index_for_its_query(seeded_postgres: sa.Engine, index: str, query: str) -> None:
    with seeded_postgres.connect() as conn:
        plan = "\n".join(row[0] for row in conn.execute(sa.text(f"EXPLAIN {query}")))
    assert index in plan, f"{index} not used by:\n{query}\n{plan}"
