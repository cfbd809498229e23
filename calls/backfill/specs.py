"""What each backfill computes: the rows it visits, and the values it writes for a batch of them.

Two backfills, run in this order: ``messages`` (``conversation_history.token_count`` and missing
``importance``), then ``calls`` (``total_context_tokens``, ``context_pruned``, ``pruning_count``,
from ``calls.context_policy.replay``, the function live code uses). Both answer the ``Backfill``
protocol, which the batching, the runs and the workers use.
"""
from __future__ import annotations

from typing import Callable, Iterable, Protocol

import sqlalchemy as sa

from calls import tokens
from calls.backfill.errors import UnknownBackfill
from calls.backfill.sql import bulk_update, driver_sql
from calls.context_policy import (
    ContextPolicy,
    ContextState,
    PolicyMessage,
    importance_of,
    policy_message,
    replay,
    state_from_totals,
)


class Backfill(Protocol):
    """One backfill: which table, which rows need it, and how a batch of them is filled."""

    name: str
    table: str
    pending: str  # SQL condition: a row still needs this backfill
    indexed_pending: str  # the part of ``pending`` a partial index lists (revision 004), for batch bounds

    def process(self, conn: sa.Connection, lo: int, hi: int, *, recompute: bool, write: bool) -> tuple[int, int]:
        """Fill the rows with ``lo < id <= hi`` that need it (all with ``recompute``); return (scanned, changed)."""
        ...


def needing(spec: Backfill, recompute: bool) -> str:
    """Return the SQL condition (`` AND ...``) for rows a run visits: all with ``recompute``."""
    return "" if recompute else f" AND {spec.pending}"


def count_needing(conn: sa.Connection, spec: Backfill, recompute: bool, after: int = 0) -> int:
    """Return how many rows after id ``after`` a run visits."""
    return conn.execute(sa.text(f"SELECT count(*) FROM {spec.table} WHERE id > :after{needing(spec, recompute)}"),
                        {"after": after}).scalar_one()


class MessagesBackfill:
    name = "messages"
    table = "conversation_history"
    pending = "(token_count IS NULL OR importance IS NULL)"
    # Nearly every pending message lacks its token count, and revision 004's partial index lists
    # exactly those: batches are bounded by it, without reading the table (see batching.next_bounds).
    indexed_pending = "token_count IS NULL"

    def process(self, conn: sa.Connection, lo: int, hi: int, *, recompute: bool, write: bool) -> tuple[int, int]:
        where = needing(self, recompute)
        rows = driver_sql(conn, f"SELECT id, role, content, token_count, importance FROM conversation_history "
                                f"WHERE id > {{p}} AND id <= {{p}}{where} ORDER BY id", (lo, hi))
        counts = tokens.count_tokens_batch([content for _id, _role, content, _tc, _imp in rows])
        changes = []
        for (id_, role, content, token_count, importance), count in zip(rows, counts):
            new_importance = importance if importance is not None else importance_of(role, content)
            if count != token_count or new_importance != importance:
                changes.append((id_, count, new_importance))
        if write and changes:
            bulk_update(conn, "conversation_history", ["token_count", "importance"], ["integer", "double precision"],
                        changes, keep_existing={"importance"})
        return len(rows), len(changes)


class CallsBackfill:
    name = "calls"
    table = "calls"
    pending = "total_context_tokens IS NULL"
    indexed_pending = pending  # revision 004's partial index
    # Bound parameters per query stay well under SQLite's and PostgreSQL's limits, whatever --batch-size.
    IDS_PER_QUERY = 1000

    def __init__(self, policy: ContextPolicy) -> None:
        self.policy = policy

    def process(self, conn: sa.Connection, lo: int, hi: int, *, recompute: bool, write: bool) -> tuple[int, int]:
        where = needing(self, recompute)
        calls = driver_sql(conn, f"SELECT id, total_context_tokens, context_pruned, pruning_count FROM calls "
                                 f"WHERE id > {{p}} AND id <= {{p}}{where} ORDER BY id", (lo, hi))
        if not calls:
            return 0, 0
        # Calls' ids are a contiguous keyset range: per call, the message count, the token sum and
        # how many messages the messages backfill has not reached yet, summed by the database.
        totals = {call_id: (n, token_sum, missing) for call_id, n, token_sum, missing in driver_sql(conn, (
            "SELECT call_id, count(*), COALESCE(sum(token_count), 0), "
            "sum(CASE WHEN token_count IS NULL OR importance IS NULL THEN 1 ELSE 0 END) "
            "FROM conversation_history WHERE call_id >= {p} AND call_id <= {p} GROUP BY call_id"),
            (calls[0][0], calls[-1][0]))}
        states: dict[int, ContextState] = {}
        for call_id, *_ in calls:
            n, token_sum, missing = totals.get(call_id, (0, 0, 0))
            # A conversation that fits in CONTEXT_MAX_TOKENS was never pruned: its fields follow
            # from the sums; only the others are replayed message by message.
            computed = None if missing else state_from_totals(n, token_sum, self.policy)
            if computed is not None:
                states[call_id] = computed
        if len(states) < len(calls):
            states.update(self._replayed(conn, [call[0] for call in calls if call[0] not in states]))
        changes = []
        for call_id, total, pruned, count in calls:
            context = states[call_id]
            new = (context.total_context_tokens, context.context_pruned, context.pruning_count)
            if new != (total, bool(pruned), count):
                changes.append((call_id, *new))
        if write and changes:
            bulk_update(conn, "calls", ["total_context_tokens", "context_pruned", "pruning_count"],
                        ["integer", "boolean", "integer"], changes)
        return len(calls), len(changes)

    def _replayed(self, conn: sa.Connection, call_ids: list[int]) -> dict[int, ContextState]:
        """Replay the policy over the conversations that may have been pruned (or are not counted yet).

        Each conversation in order (turn index where set, then time, then id); content is only
        fetched for messages the messages backfill has not reached yet.
        """
        messages = []
        for chunk in (call_ids[i:i + self.IDS_PER_QUERY] for i in range(0, len(call_ids), self.IDS_PER_QUERY)):
            messages += driver_sql(conn, (
                "SELECT call_id, role, CASE WHEN token_count IS NULL OR importance IS NULL THEN content END, "
                "token_count, importance FROM conversation_history "
                f"WHERE call_id IN ({', '.join(['{p}'] * len(chunk))}) "
                "ORDER BY call_id, turn_index NULLS LAST, created_at, id"), tuple(chunk))
        by_call: dict[int, list[PolicyMessage]] = {call_id: [] for call_id in call_ids}
        for call_id, role, content, token_count, importance in messages:
            if token_count is not None and importance is not None:
                message = PolicyMessage(role, token_count, importance)
            else:
                message = policy_message(role=role, content=content, token_count=token_count, importance=importance)
            by_call[call_id].append(message)
        return {call_id: replay(conversation, self.policy) for call_id, conversation in by_call.items()}


# Every backfill by name, in the order they run (a call's context sums its messages' counts): a new
# backfill is a spec and a line here (migrations_alembic/data_migrations/README.md).
_MAKERS: dict[str, Callable[[ContextPolicy], Backfill]] = {
    "messages": lambda policy: MessagesBackfill(),
    "calls": CallsBackfill,
}
BACKFILLS = tuple(_MAKERS)


def backfill_named(name: str, policy: ContextPolicy | None = None) -> Backfill:
    """Return the backfill called ``name``; refuse (``UnknownBackfill``) a name none answers to."""
    return _MAKERS[in_run_order([name])[0]](policy or ContextPolicy.from_settings())


def in_run_order(names: Iterable[str]) -> tuple[str, ...]:
    """Return ``names`` in the order the backfills run; refuse (``UnknownBackfill``) a name none answers to."""
    wanted = set(names)
    if unknown := sorted(wanted - set(_MAKERS)):
        raise UnknownBackfill(f"no backfill is named {', '.join(map(repr, unknown))}: "
                              f"the backfills are {', '.join(BACKFILLS)}")
    return tuple(name for name in BACKFILLS if name in wanted)
