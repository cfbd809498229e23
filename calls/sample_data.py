"""Generate realistic sample data at any size: for demos, tests and benchmarks.

Contacts; calls with 5-60 turn conversations in order (a few from "other systems", with no turn
index; some very long messages); call notes, agent transitions and tier escalations; workflow
traces with agent executions; performance and system metric time series. Deterministic for a
given seed. PostgreSQL rows are streamed with COPY; SQLite gets ``executemany``; one commit at the end.

Works on any schema from revision 002 up, so benchmarks can seed before 003 and time it.
Ids are assigned here (after the current maximum) and sequences are moved past them: run it
on a database nobody else is writing to.
"""
from __future__ import annotations

import itertools
import random
import uuid
from dataclasses import dataclass
from datetime import datetime, timedelta, timezone
from decimal import Decimal
from typing import Any, Callable, Iterable, Iterator, Sequence

import sqlalchemy as sa

from schema_engine.errors import SchemaError

STATUSES = (("completed", 70), ("no_answer", 10), ("voicemail", 8), ("failed", 5), ("busy", 4), ("canceled", 3))
TIERS = (("tier1", 70), ("tier2", 25), ("tier3", 5))
OUTCOMES = ("appointment_set", "callback_requested", "not_interested", "wrong_number", "listing_info_sent", None)
AGENTS = ("greeter", "qualifier", "scheduler", "listing_expert", "objection_handler")
FIRST_NAMES = ("Maria", "James", "Wei", "Aisha", "Carlos", "Olivia",
               "Noah", "Priya", "Liam", "Sofia", "Kenji", "Fatima")
LAST_NAMES = ("Garcia", "Smith", "Chen", "Khan", "Rossi", "Johnson", "Nguyen", "Patel", "Müller", "Silva", "Tanaka")
CITIES = (("Austin", "TX"), ("Phoenix", "AZ"), ("Tampa", "FL"), ("Denver", "CO"), ("Raleigh", "NC"), ("Boise", "ID"))
SYSTEM_PROMPT = (
    "You are a friendly real-estate assistant calling on behalf of Sunrise Realty. Qualify the lead: "
    "budget, timeline, preferred neighborhoods, financing. Be concise, never pushy; offer a showing."
)
USER_LINES = (
    "Hi, yes, this is {name}.",
    "We're thinking of selling in the spring, maybe sooner if the price is right.",
    "Our budget is around ${budget}k, but we'd stretch for the right place.",
    "Is the house on {street} still available? 🏡",
    "I'm pre-approved with my credit union.",
    "Can you call me back after 5pm? I'm at work.",
    "How big is the backyard? We have two dogs 🐕🐕",
    "Honestly I'm just browsing right now.",
    "What are property taxes like in {city}?",
    "我们想看看三居室的房子。",
    "Please take me off your list.",
    "Sure, Saturday morning works for a showing.",
)
ASSISTANT_LINES = (
    "Thanks for taking my call, {name}! I'm the assistant from Sunrise Realty.",
    "Great. What's your timeline for moving?",
    "Understood. Which neighborhoods in {city} are you most interested in?",
    "The listing on {street} is still active: 3 bedrooms, 2 baths, about 1,850 square feet.",
    "I can book a showing for you. Does Saturday at 10am work?",
    "Property taxes in {city} run about 1.8% of assessed value; I can send the exact figure.",
    "No problem at all, I'll note that and won't call again.",
    "Perfect, you're booked. You'll get a text confirmation shortly.",
)
TOOL_LINES = (
    '{{"tool": "calendar.book", "slot": "2026-12-05T10:00:00", "status": "confirmed"}}',
    '{{"tool": "mls.search", "city": "{city}", "results": 14, "median_price": {budget}000}}',
    '{{"tool": "crm.update", "lead_status": "qualified", "note": "<|endoftext|> marker from upstream"}}',
)
NOTE_BODIES = ("Lead asked for a callback.", "Interested in 3BR homes.", "Do-not-call requested.", "Hot lead.")
# The columns written, per table; every table of revision 002 has them (the later revisions' columns have defaults).
COLUMNS = {
    "contacts": ["id", "first_name", "last_name", "phone_number", "email", "city", "state", "lead_source",
                 "lead_status", "created_at", "updated_at"],
    "calls": ["id", "contact_id", "phone_number", "direction", "status", "tier", "created_at", "updated_at",
              "started_at", "ended_at", "duration_seconds", "outcome", "total_cost", "call_sid",
              "voice_provider", "current_agent", "escalation_count"],
    "conversation_history": ["call_id", "role", "content", "turn_index", "created_at"],
    "call_notes": ["call_id", "author", "note_type", "body", "created_at"],
    "agent_transitions": ["call_id", "from_agent", "to_agent", "reason", "turn_index", "transitioned_at"],
    "tier_escalation_events": ["call_id", "from_tier", "to_tier", "reason", "triggered_by", "escalated_at"],
    "workflow_traces": ["id", "trace_id", "call_id", "workflow_name", "status", "started_at", "ended_at",
                        "duration_ms", "total_tokens", "total_cost"],
    "agent_executions": ["trace_id", "agent_name", "status", "model_name", "input_tokens", "output_tokens",
                         "latency_ms", "cost", "started_at", "ended_at"],
    "performance_metrics": ["metric_name", "value", "unit", "agent_name", "call_id", "recorded_at"],
    "system_metrics": ["metric_name", "value", "host", "recorded_at"],
}


@dataclass
class SampleDataCounts:
    """How many rows of each kind were written."""

    contacts: int = 0
    calls: int = 0
    messages: int = 0
    call_notes: int = 0
    agent_transitions: int = 0
    tier_escalation_events: int = 0
    workflow_traces: int = 0
    agent_executions: int = 0
    performance_metrics: int = 0
    system_metrics: int = 0


def _weighted(rng: random.Random, choices: Sequence[tuple[Any, int]]) -> Any:
    return rng.choices([c for c, _ in choices], weights=[w for _, w in choices])[0]


class _Writer:
    """Buffers rows per table and writes them in bulk (COPY on PostgreSQL); counts them."""

    def __init__(self, connection: sa.Connection, columns: dict[str, list[str]], flush_rows: int = 20_000) -> None:
        self.connection = connection
        self.columns = columns
        self.buffers: dict[str, list[tuple]] = {t: [] for t in columns}
        self.added: dict[str, int] = dict.fromkeys(columns, 0)
        self.flush_rows = flush_rows
        self.postgres = connection.dialect.name == "postgresql"

    def add(self, table: str, row: tuple) -> None:
        self.added[table] += 1
        buffer = self.buffers[table]
        buffer.append(row)
        if len(buffer) >= self.flush_rows:
            self.flush(table)

    def flush(self, table: str) -> None:
        rows, self.buffers[table] = self.buffers[table], []
        if not rows:
            return
        names = self.columns[table]
        if self.postgres:
            cursor = self.connection.connection.driver_connection.cursor()
            with cursor.copy(f"COPY {table} ({', '.join(names)}) FROM STDIN") as copy:
                for row in rows:
                    copy.write_row(row)
        else:
            placeholders = ", ".join("?" for _ in names)
            self.connection.connection.driver_connection.executemany(
                f"INSERT INTO {table} ({', '.join(names)}) VALUES ({placeholders})",
                [tuple(_sqlite_value(v) for v in row) for row in rows],
            )

    def flush_all(self) -> None:
        for table in self.buffers:
            self.flush(table)

    def counts(self) -> SampleDataCounts:
        added = dict(self.added)
        return SampleDataCounts(messages=added.pop("conversation_history"), **added)


def _sqlite_value(value: Any) -> Any:
    if isinstance(value, datetime):
        return value.astimezone(timezone.utc).strftime("%Y-%m-%d %H:%M:%S.%f")
    if isinstance(value, Decimal):
        return str(value)
    return value


def _next_id(connection: sa.Connection, table: str) -> int:
    return (connection.execute(sa.text(f"SELECT COALESCE(MAX(id), 0) FROM {table}")).scalar() or 0) + 1


@dataclass(frozen=True)
class _Contact:
    """What a call takes from its contact."""

    id: int
    first_name: str
    city: str
    phone: str


@dataclass(frozen=True)
class _Call:
    """A call as written, and what its conversation, events, trace and metrics are drawn from."""

    id: int
    contact: _Contact
    status: str
    tier: str
    started: datetime
    ended: datetime
    duration: int
    cost: Decimal
    agents: list[str]

    @property
    def answered(self) -> bool:
        return self.status == "completed"


def generate_sample_data(
    *,
    connection: sa.Connection,
    calls: int,
    seed: int = 42,
    end: datetime | None = None,
    days: int = 90,
    max_turns: int = 60,
    on_progress: Callable[[int, int], None] | None = None,
) -> SampleDataCounts:
    """Write ``calls`` calls with everything that goes with them, commit once at the end; return the counts.

    One transaction: a run that fails or is stopped adds nothing, and the next run with the same
    seed writes what it would have. Answered calls have 5 to ``max_turns`` turns (about 25 messages
    a call on average with 60), unanswered ones 5 to 8. ``on_progress(done, total)`` is called
    every 1,000 calls and at the end. Raises ``SchemaError`` on a schema below revision 002 and
    ``ValueError`` for ``max_turns`` below 8.
    """
    if max_turns < 8:
        raise ValueError("max_turns must be at least 8")
    _require_revision_002(connection)
    end = end or datetime.now(timezone.utc).replace(microsecond=0)
    start = end - timedelta(days=days)
    span = (end - start).total_seconds()
    rng = random.Random(seed)
    writer = _Writer(connection, COLUMNS)

    contacts = _write_contacts(writer, rng, seed=seed, n=max(1, calls // 3), start=start, days=days)
    call_base = _next_id(connection, "calls")
    trace_ids = itertools.count(_next_id(connection, "workflow_traces"))
    for i in range(calls):
        contact = contacts[rng.randrange(len(contacts))]
        created = start + timedelta(seconds=span * i / max(calls, 1) + rng.random())  # evenly spread, in id order
        call = _write_call(writer, rng, call_id=call_base + i, contact=contact, created=created)
        turns = _write_conversation(writer, rng, call=call, max_turns=max_turns)
        _write_call_events(writer, rng, call=call)
        _write_trace(writer, rng, call=call, trace_ids=trace_ids, turns=turns)
        _write_call_metrics(writer, rng, call=call)
        if on_progress and (i + 1) % 1000 == 0:
            on_progress(i + 1, calls)
    _write_system_metrics(writer, rng, calls=calls, start=start, span=span, days=days)
    writer.flush_all()
    _move_sequences(connection, ("contacts", "calls", "workflow_traces"))
    connection.commit()
    if on_progress:
        on_progress(calls, calls)
    return writer.counts()


def _require_revision_002(connection: sa.Connection) -> None:
    present = set(sa.inspect(connection).get_table_names())
    if "calls" not in present or "agent_transitions" not in present:
        raise SchemaError("sample data needs the schema at revision 002 or later: run 'manage.py migrate_schema'")


def _write_contacts(writer: _Writer, rng: random.Random, *, seed: int, n: int, start: datetime,
                    days: int) -> list[_Contact]:
    """Write ``n`` contacts created over the period, with ids after the current largest; return them."""
    contact_base = _next_id(writer.connection, "contacts")
    if contact_base > 1:
        # Data is there already: a stream of its own, so this run adds new calls (new SIDs and trace
        # ids) instead of repeating the first; the same seed on the same data still gives the same rows.
        rng.seed(f"{seed}:{contact_base}")
    phone_base = rng.randrange(2_000_000, 9_000_000) * 1000 + contact_base
    contacts = []
    for i in range(n):
        first, last = rng.choice(FIRST_NAMES), rng.choice(LAST_NAMES)
        city, state = rng.choice(CITIES)
        phone = f"+1{phone_base + i:010d}"[:12]
        created = start + timedelta(seconds=rng.randrange(days * 86400))
        contacts.append(_Contact(contact_base + i, first, city, phone))
        writer.add("contacts", (contact_base + i, first, last, phone, f"{first}.{last}{i}@example.com".lower(),
                                city, state, rng.choice(("zillow", "referral", "open_house", "web_form")),
                                rng.choice(("new", "contacted", "qualified", "nurture")), created, created))
    writer.flush("contacts")
    return contacts


def _write_call(writer: _Writer, rng: random.Random, *, call_id: int, contact: _Contact,
                created: datetime) -> _Call:
    """Write one outbound call to ``contact``: its status, tier, times, cost and the agents it went through."""
    status = _weighted(rng, STATUSES)
    tier = _weighted(rng, TIERS)
    answered = status == "completed"
    duration = rng.randint(30, 900) if answered else rng.randint(0, 40)
    started = created + timedelta(seconds=rng.randint(1, 20))
    ended = started + timedelta(seconds=duration)
    cost = Decimal(duration * 0.0021 + rng.random() * 0.05).quantize(Decimal("0.0001"))
    agents = rng.sample(AGENTS, k=rng.randint(1, 3))
    escalations = 0 if tier == "tier1" else 1 if tier == "tier2" else 2
    writer.add("calls", (call_id, contact.id, contact.phone, "outbound", status, tier, created, ended, started, ended,
                         duration, rng.choice(OUTCOMES) if answered else None, cost,
                         f"CA{uuid.UUID(int=rng.getrandbits(128)).hex}", rng.choice(("twilio", "vonage")), agents[-1],
                         escalations))
    return _Call(call_id, contact, status, tier, started, ended, duration, cost, agents)


def _write_conversation(writer: _Writer, rng: random.Random, *, call: _Call, max_turns: int) -> int:
    """Write the call's messages, a system prompt first; return how many turns it had."""
    turns = rng.randint(5, max_turns) if call.answered else rng.randint(5, 8)
    ordered = rng.random() > 0.05  # a few conversations arrive from other systems without turn order
    street = f"{rng.randint(100, 9999)} {rng.choice(('Oak', 'Maple', 'Cedar', 'Elm'))} St"
    fill = {"name": call.contact.first_name, "city": call.contact.city, "street": street,
            "budget": rng.randint(250, 1200)}
    at = call.started
    for turn in range(turns):
        if turn == 0:
            role, content = "system", SYSTEM_PROMPT
        elif rng.random() < 0.06:
            role, content = "tool", rng.choice(TOOL_LINES).format(**fill)
        elif turn % 2:
            role, content = "assistant", rng.choice(ASSISTANT_LINES).format(**fill)
        else:
            role, content = "user", rng.choice(USER_LINES).format(**fill)
        if rng.random() < 0.004:  # a pasted listing or transcript: very long
            content = (content + " ") * rng.randint(50, 400)
        at = at + timedelta(seconds=rng.randint(1, 15))
        writer.add("conversation_history", (call.id, role, content, turn if ordered else None, at))
    return turns


def _write_call_events(writer: _Writer, rng: random.Random, *, call: _Call) -> None:
    """Write the call's agent transitions, its tier escalation (above tier 1) and, for some, an operator's note."""
    for j in range(1, len(call.agents)):
        writer.add("agent_transitions", (call.id, call.agents[j - 1], call.agents[j], "intent changed", j * 3,
                                         call.started))
    if call.tier != "tier1":
        writer.add("tier_escalation_events", (call.id, "tier1", call.tier, "lead asked for a specialist", "agent",
                                              call.ended))
    if rng.random() < 0.15:
        writer.add("call_notes", (call.id, "operator", "general", rng.choice(NOTE_BODIES), call.ended))


def _write_trace(writer: _Writer, rng: random.Random, *, call: _Call, trace_ids: Iterator[int], turns: int) -> None:
    """Write, for most calls, a workflow trace and its agent executions (ids from ``trace_ids``)."""
    if rng.random() >= 0.8:
        return
    trace_id = next(trace_ids)
    n_exec = rng.randint(2, 6)
    writer.add("workflow_traces", (trace_id, str(uuid.UUID(int=rng.getrandbits(128))), call.id, "voice_call",
                                   "error" if call.status == "failed" else "success", call.started, call.ended,
                                   call.duration * 1000, turns * 180, call.cost))
    for k in range(n_exec):
        latency = rng.randint(120, 2500)
        writer.add("agent_executions", (trace_id, call.agents[k % len(call.agents)], "success", "gpt-4o-mini",
                                        rng.randint(200, 4000), rng.randint(20, 400), latency,
                                        Decimal(rng.random() / 100).quantize(Decimal("0.000001")),
                                        call.started, call.started + timedelta(milliseconds=latency)))


def _write_call_metrics(writer: _Writer, rng: random.Random, *, call: _Call) -> None:
    """Write the call's response latency and cost samples."""
    writer.add("performance_metrics", ("response_latency_ms", rng.gauss(850, 200), "ms", call.agents[0], call.id,
                                       call.ended))
    writer.add("performance_metrics", ("call_cost_usd", float(call.cost), "usd", None, call.id, call.ended))


def _write_system_metrics(writer: _Writer, rng: random.Random, *, calls: int, start: datetime, span: float,
                          days: int) -> None:
    """Write each host's CPU and active-call samples every 5 minutes over the period, capped to the data's scale."""
    samples = min(days * 288, max(calls, 12))
    step = span / samples
    for s in range(samples):
        at = start + timedelta(seconds=s * step)
        for host in ("voice-1", "voice-2"):
            writer.add("system_metrics", ("cpu_percent", max(0.0, min(100.0, rng.gauss(45, 15))), host, at))
            writer.add("system_metrics", ("active_calls", float(rng.randint(0, 40)), host, at))


def _move_sequences(connection: sa.Connection, tables: Iterable[str]) -> None:
    if connection.dialect.name != "postgresql":
        return  # SQLite's INTEGER PRIMARY KEY continues after the largest id by itself
    for table in tables:
        connection.execute(
            sa.text(f"SELECT setval(pg_get_serial_sequence('{table}', 'id'), (SELECT MAX(id) FROM {table}))")
        )
