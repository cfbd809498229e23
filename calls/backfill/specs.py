"""What each backfill computes: the rows it visits, and the values it writes for a batch of them.

Two built-in backfills, run in this order: ``messages`` (``conversation_history.token_count`` and
missing ``importance``), then ``calls`` (``total_context_tokens``, ``context_pruned``,
``pruning_count``, from ``calls.context_policy.replay``, the function live code uses). Then the
fills the code's expand revisions declare (``expand_steps`` with ``ChangeType`` steps,
``schema_engine.versioning``): ``expand_<revision>`` fills each new physical column from its
``up`` expression, oldest revision first (``ColumnFill``). All answer the ``Backfill`` protocol,
which the batching, the runs and the workers use.

A fill over several tables is one name for the operator and the gate, and one run per table
(``DeclaredFill.parts``): a run's cursor and batches are ids of one table.
"""
from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Callable, Iterable, Protocol

import sqlalchemy as sa

from calls import tokens
from calls.backfill.errors import InvalidFill, SchemaNotReady, UnknownBackfill
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
from calls.models import BackfillRun
from schema_engine import state, versioning


class Backfill(Protocol):
    """One backfill: which table, which rows need it, and how a batch of them is filled."""

    name: str
    table: str
    pending: str  # SQL condition: a row still needs this backfill
    indexed_pending: str  # the part of ``pending`` a partial index lists (revision 004), for batch bounds
    # Beside live traffic, the share of its time a working worker spends on batches (throttle.Throttle).
    duty_beside_traffic: float

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
    duty_beside_traffic = 1.0  # its Python work leaves the database room: holding half the workers is enough
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
    duty_beside_traffic = 1.0
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


# backfill_runs.backfill (and backfill_batches.backfill) hold this many characters (revision 005).
RUN_NAME_LENGTH = BackfillRun._meta.get_field("backfill").max_length
# A name the fill's SQL may use unquoted, as the engine's batching and runs do.
_PLAIN_IDENTIFIER = re.compile(r"[a-z_][a-z0-9_]*")


class ColumnFill:
    """Fill one table's new physical columns of one expand revision: ``new = up(old)`` where new is still NULL.

    The UPDATE and the pending condition are ``versioning.fill_sql`` and ``pending_sql``. Each batch's
    transaction sets the setting ``'reautomation.fill'`` on (locally) first, so the expand's sync trigger keeps
    out of the fill's writes. ``recompute`` rewrites every new value that differs from ``up(old)``
    (the step's ``up`` reads the old column by its own name, which it keeps until the contract).
    """
    # One UPDATE per batch, all of it the database's work: with only half the workers held, its one
    # worker still kept a core busy beside the writers; at a quarter of the time it leaves them theirs
    # (docs/benchmarks.md, "Zero-downtime changes").
    duty_beside_traffic = 0.25

    def __init__(self, *, name: str, fill: str, revision: str, table: str,
                 steps: tuple[versioning.ChangeType, ...]) -> None:
        self.name, self.fill, self.revision, self.table, self.steps = name, fill, revision, table, steps
        self.columns = tuple(versioning.physical_name(revision, step.column) for step in steps)
        self.update = versioning.fill_sql(revision, table, steps)  # ids in (:lo, :hi]
        self.pending = versioning.pending_sql(revision, table, steps)
        # No index lists the rows still to fill: batch bounds probe the primary key (batching.next_bounds).
        self.indexed_pending = self.pending
        differs = [(f'"{column}"', f"({step.up})") for column, step in zip(self.columns, steps)]
        self.recompute_updates = tuple(
            f"UPDATE {table} SET {new} = {up} WHERE id > {{p}} AND id <= {{p}} AND {new} IS DISTINCT FROM {up}"
            for new, up in differs)
        self.differs = " OR ".join(f"{new} IS DISTINCT FROM {up}" for new, up in differs)

    @property
    def describes(self) -> str:
        """What it fills, for the operator: ``calls._e_duration_seconds (from duration_seconds)``."""
        return ", ".join(f"{self.table}.{column} (from {step.column})"
                         for column, step in zip(self.columns, self.steps))

    def process(self, conn: sa.Connection, lo: int, hi: int, *, recompute: bool, write: bool) -> tuple[int, int]:
        in_batch = f"FROM {self.table} WHERE id > {{p}} AND id <= {{p}}"
        if write and not recompute:
            if conn.dialect.name == "postgresql":
                conn.execute(sa.text(versioning.FILL_SETTING_SQL))  # the sync trigger stands aside
            changed = conn.execute(sa.text(self.update), {"lo": lo, "hi": hi}).rowcount
        elif write:
            if conn.dialect.name == "postgresql":
                conn.execute(sa.text(versioning.FILL_SETTING_SQL))
            filled: set[int] = set()
            for update in self.recompute_updates:
                filled.update(id_ for id_, in driver_sql(conn, f"{update} RETURNING id", (lo, hi)))
            changed = len(filled)
        else:
            needs = self.differs if recompute else self.pending
            (changed,), = driver_sql(conn, f"SELECT count(*) {in_batch} AND ({needs})", (lo, hi))
        if not recompute:
            return changed, changed  # every row still to fill is filled
        (scanned,), = driver_sql(conn, f"SELECT count(*) {in_batch}", (lo, hi))
        return scanned, changed


@dataclass(frozen=True)
class DeclaredFill:
    """A fill an expand revision declares: its name, the revision, and its steps grouped by table (in their order)."""

    name: str
    revision: str
    tables: tuple[tuple[str, tuple[versioning.ChangeType, ...]], ...]

    @classmethod
    def of(cls, revision: str, steps: Iterable[versioning.ChangeType]) -> DeclaredFill:
        """Group ``steps`` by table; refuse (``InvalidFill``) what the runs or the SQL could not take."""
        name, by_table = versioning.fill_name(revision), {}
        for step in steps:
            by_table.setdefault(step.table, []).append(step)
        fill = cls(name=name, revision=revision, tables=tuple((t, tuple(s)) for t, s in by_table.items()))
        for part in fill.part_names():
            if len(part) > RUN_NAME_LENGTH:
                raise InvalidFill(
                    f"revision {revision}'s fill is named {part!r}, longer than backfill_runs.backfill holds "
                    f"({RUN_NAME_LENGTH} characters): give the revision a shorter id (revision --autogenerate's "
                    "12-hex ids fit)")
        for table, table_steps in fill.tables:
            for name_ in (table, *(versioning.physical_name(revision, step.column) for step in table_steps)):
                if not _PLAIN_IDENTIFIER.fullmatch(name_):
                    raise InvalidFill(f"revision {revision}'s fill names {name_!r}: the backfill takes lowercase "
                                      "table and column names of letters, digits and underscores only")
        return fill

    def part_names(self) -> tuple[str, ...]:
        """The runs' names: the fill's own for one table; ``<fill>.1``, ``<fill>.2``, ... for several (table order)."""
        if len(self.tables) == 1:
            return (self.name,)
        return tuple(f"{self.name}.{n}" for n in range(1, len(self.tables) + 1))

    def parts(self) -> tuple[ColumnFill, ...]:
        return tuple(ColumnFill(name=part, fill=self.name, revision=self.revision, table=table, steps=steps)
                     for part, (table, steps) in zip(self.part_names(), self.tables))


def declared_fills() -> tuple[DeclaredFill, ...]:
    """Return the fills the code's expand revisions declare, oldest revision first (reads the revision files)."""
    script = state.script_directory()
    steps = versioning.declared_fills(script)
    chain = [rev.revision for rev in reversed(list(script.walk_revisions()))]
    return tuple(DeclaredFill.of(revision, steps[versioning.fill_name(revision)]) for revision in chain
                 if versioning.fill_name(revision) in steps)


def skip_reason(conn: sa.Connection, spec: Backfill, applied: set[str]) -> str | None:
    """Return why ``spec`` has nothing to fill in this database (None: it has work, or may have).

    A fill has work only on PostgreSQL, between its expand (which adds the new columns) and the
    contract (which renames them over the old ones). ``applied``: the database's revisions.
    A table with some of the fill's columns and not the others is refused (``SchemaNotReady``).
    """
    if not isinstance(spec, ColumnFill):
        return None
    if spec.revision not in applied:
        return (f"its expand revision {spec.revision} is not applied to this database: nothing to fill "
                f"until 'manage.py migrate_schema upgrade {spec.revision}'")
    if conn.dialect.name != "postgresql":
        return (f"nothing to fill on {conn.dialect.name}: revision {spec.revision} changed {spec.table} in place "
                "(no versioned schemas)")
    present = {column["name"] for column in sa.inspect(conn).get_columns(spec.table)}
    missing = [column for column in spec.columns if column not in present]
    if not missing:
        return None
    if len(missing) == len(spec.columns):
        return (f"revision {spec.revision} is contracted: {spec.table} has no {', '.join(missing)} left to fill")
    raise SchemaNotReady(f"{spec.table} has {', '.join(c for c in spec.columns if c in present)} but not "
                         f"{', '.join(missing)}: revision {spec.revision}'s expand is not whole; downgrade below it "
                         "and upgrade again")


# The built-in backfills by name, in the order they run (a call's context sums its messages' counts):
# a new one is a spec and a line here (migrations_alembic/data_migrations/README.md). The fills
# declared by expand revisions run after them.
_MAKERS: dict[str, Callable[[ContextPolicy], Backfill]] = {
    "messages": lambda policy: MessagesBackfill(),
    "calls": CallsBackfill,
}
BACKFILLS = tuple(_MAKERS)


class Catalog:
    """The backfills this code knows, from one read of its revisions: the built-ins, then the declared fills.

    Names are what the operator and the gate use (``messages``, ``calls``, ``expand_<revision>``);
    parts are what runs (the run's name): the same, except for a fill over several tables.
    """

    def __init__(self, fills: tuple[DeclaredFill, ...]) -> None:
        self.fills = fills
        self.groups: dict[str, tuple[str, ...]] = {
            **{name: (name,) for name in BACKFILLS}, **{fill.name: fill.part_names() for fill in fills}}
        self.names = tuple(self.groups)
        self.parts = tuple(part for parts in self.groups.values() for part in parts)
        self._fill_parts = {part.name: part for fill in fills for part in fill.parts()}

    @classmethod
    def load(cls) -> Catalog:
        return cls(declared_fills())

    def grouped(self, names: Iterable[str] | None = None) -> dict[str, tuple[str, ...]]:
        """Return each of ``names`` (default: every one) with the parts it runs, in run order; refuse unknown ones."""
        if names is None:
            return dict(self.groups)
        names = list(names)
        if unknown := sorted(set(names) - set(self.groups) - set(self.parts)):
            raise self._unknown(unknown)
        return {name: self.groups.get(name, (name,)) for name in names}

    def _unknown(self, names: list[str]) -> UnknownBackfill:
        return UnknownBackfill(f"no backfill is named {', '.join(map(repr, names))}: "
                               f"the backfills are {', '.join(self.names)}")

    def in_run_order(self, names: Iterable[str] | None = None) -> tuple[str, ...]:
        """Return the parts ``names`` (default: every backfill) run, in the order they run."""
        wanted = {part for parts in self.grouped(names).values() for part in parts}
        return tuple(part for part in self.parts if part in wanted)

    def spec(self, part: str, policy: ContextPolicy | None = None) -> Backfill:
        """Return the backfill that runs as ``part``."""
        if part in _MAKERS:
            return _MAKERS[part](policy or ContextPolicy.from_settings())
        if part in self._fill_parts:
            return self._fill_parts[part]
        if part in self.groups:
            raise UnknownBackfill(f"{part} fills several tables, each its own run: {', '.join(self.groups[part])}")
        raise self._unknown([part])

    def specs(self, names: Iterable[str] | None = None, policy: ContextPolicy | None = None) -> list[Backfill]:
        """Return the backfills ``names`` (default: every one) run, in the order they run."""
        policy = policy or ContextPolicy.from_settings()
        return [self.spec(part, policy) for part in self.in_run_order(names)]


def backfill_names() -> tuple[str, ...]:
    """Return every backfill's name, in run order: the built-ins, then the fills the revisions declare."""
    return Catalog.load().names


def backfill_named(name: str, policy: ContextPolicy | None = None) -> Backfill:
    """Return the backfill that runs as ``name``; refuse (``UnknownBackfill``) a name none answers to."""
    return Catalog.load().spec(name, policy)


def in_run_order(names: Iterable[str] | None = None) -> tuple[str, ...]:
    """Return what ``names`` (default: every backfill) run, in run order; refuse (``UnknownBackfill``) unknown ones."""
    return Catalog.load().in_run_order(names)
