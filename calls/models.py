"""Contacts, calls and what happens on a call. The schema's shape is written here, once.

The tables belong to Alembic (``managed = False``): ``schema_engine.metadata`` derives Alembic's
``target_metadata`` from these models, and a test fails when they and the revisions drift.
Every NOT NULL column that callers may omit has a database default (``db_default``), so rows
written by other systems with plain SQL are valid.
"""
from __future__ import annotations

from decimal import Decimal

from django.db import models
from django.db.models import F, Q
from django.db.models.functions import Now


class CallStatus(models.TextChoices):
    QUEUED = "queued"
    RINGING = "ringing"
    IN_PROGRESS = "in_progress"
    COMPLETED = "completed"
    FAILED = "failed"
    NO_ANSWER = "no_answer"
    BUSY = "busy"
    VOICEMAIL = "voicemail"
    CANCELED = "canceled"


class Tier(models.TextChoices):
    TIER1 = "tier1", "Tier 1 (qualifying agent)"
    TIER2 = "tier2", "Tier 2 (specialist agent)"
    TIER3 = "tier3", "Tier 3 (human handoff)"


class Role(models.TextChoices):
    SYSTEM = "system"
    USER = "user"
    ASSISTANT = "assistant"
    TOOL = "tool"


class Contact(models.Model):
    """A real-estate lead the agents phone."""

    id = models.BigAutoField(primary_key=True)
    first_name = models.CharField(max_length=100, db_default="", blank=True)
    last_name = models.CharField(max_length=100, db_default="", blank=True)
    phone_number = models.CharField(max_length=32, unique=True, help_text="E.164, e.g. +15555551234")
    email = models.EmailField(max_length=254, null=True, blank=True)
    street_address = models.CharField(max_length=255, null=True, blank=True)
    city = models.CharField(max_length=100, null=True, blank=True)
    state = models.CharField(max_length=32, null=True, blank=True)
    postal_code = models.CharField(max_length=16, null=True, blank=True)
    lead_source = models.CharField(max_length=64, null=True, blank=True)
    lead_status = models.CharField(max_length=32, db_default="new")
    do_not_call = models.BooleanField(db_default=False)
    created_at = models.DateTimeField(db_default=Now())
    updated_at = models.DateTimeField(db_default=Now())

    class Meta:
        managed = False
        db_table = "contacts"
        indexes = [models.Index(fields=["last_name", "first_name"], name="ix_contacts_name")]

    def __str__(self) -> str:
        name = f"{self.first_name} {self.last_name}".strip()
        return f"{name} ({self.phone_number})" if name else self.phone_number


class Call(models.Model):
    """One phone call placed (or received) by a voice agent."""

    id = models.BigAutoField(primary_key=True)
    contact = models.ForeignKey(
        Contact, null=True, blank=True, on_delete=models.SET_NULL, related_name="calls"
    )
    phone_number = models.CharField(max_length=32, db_index=True)
    direction = models.CharField(max_length=16, db_default="outbound")
    status = models.CharField(max_length=32, choices=CallStatus.choices, db_default=CallStatus.QUEUED)
    tier = models.CharField(max_length=16, choices=Tier.choices, db_default=Tier.TIER1)
    created_at = models.DateTimeField(db_default=Now(), db_index=True)
    updated_at = models.DateTimeField(db_default=Now())
    started_at = models.DateTimeField(null=True, blank=True)
    ended_at = models.DateTimeField(null=True, blank=True)
    duration_seconds = models.IntegerField(null=True, blank=True)
    outcome = models.CharField(max_length=64, null=True, blank=True)
    total_cost = models.DecimalField(max_digits=10, decimal_places=4, db_default=Decimal("0"))
    summary = models.TextField(null=True, blank=True)
    error_message = models.TextField(null=True, blank=True)
    # Revision 002: voice agent integration.
    call_sid = models.CharField(max_length=64, null=True, blank=True, unique=True,
                                help_text="The telephony provider's id for the call")
    voice_provider = models.CharField(max_length=32, null=True, blank=True)
    voice_id = models.CharField(max_length=64, null=True, blank=True)
    current_agent = models.CharField(max_length=64, null=True, blank=True)
    escalation_count = models.IntegerField(db_default=0)
    avg_response_latency_ms = models.IntegerField(null=True, blank=True)
    # Revision 003: context management (calls/context_policy.py defines them).
    context_pruned = models.BooleanField(db_default=False)
    pruning_count = models.IntegerField(db_default=0)
    total_context_tokens = models.IntegerField(null=True, blank=True,
                                               help_text="NULL until computed (live or by backfill_context)")

    class Meta:
        managed = False
        db_table = "calls"
        indexes = [
            models.Index(fields=["status"], name="ix_calls_status"),
            models.Index(fields=["current_agent"], name="ix_calls_current_agent"),
            models.Index(fields=["context_pruned", "pruning_count"], name="ix_calls_context_pruning"),
            # Revision 004: see its docstring for the query each one serves.
            models.Index(fields=["created_at"], include=["status", "tier", "total_cost"],
                         name="ix_calls_created_at_covering"),
            models.Index(fields=["status", "created_at"], name="ix_calls_status_created_at"),
            models.Index(fields=["tier", "created_at"], name="ix_calls_tier_created_at"),
            models.Index(fields=["created_at"], condition=Q(context_pruned=True),
                         name="ix_calls_pruned_created_at"),
            models.Index(fields=["id"], condition=Q(total_context_tokens__isnull=True),
                         name="ix_calls_context_pending"),
        ]

    def __str__(self) -> str:
        return f"Call {self.pk} to {self.phone_number}"


class ConversationMessage(models.Model):
    """One turn of a call's conversation, as the model saw it."""

    id = models.BigAutoField(primary_key=True)
    call = models.ForeignKey(Call, on_delete=models.CASCADE, related_name="messages", db_index=False)
    role = models.CharField(max_length=16, choices=Role.choices)
    content = models.TextField()
    turn_index = models.IntegerField(null=True, blank=True, help_text="Order within the call, when known")
    created_at = models.DateTimeField(db_default=Now())
    # Revision 003: NULL until computed (live or by backfill_context).
    importance = models.FloatField(null=True, blank=True, help_text="0..1; what pruning keeps longest")
    token_count = models.IntegerField(null=True, blank=True)

    class Meta:
        managed = False
        db_table = "conversation_history"
        ordering = [F("turn_index").asc(nulls_last=True), "created_at", "id"]
        indexes = [
            # A call's conversation in order: WHERE call_id = ? ORDER BY turn_index, created_at, id.
            models.Index(fields=["call", "turn_index", "created_at", "id"], name="ix_conversation_history_call_order"),
            models.Index(fields=["created_at"], name="ix_conversation_history_created_at"),
            # Revision 004: the backfill's scan for messages still to count.
            models.Index(fields=["id"], condition=Q(token_count__isnull=True),
                         name="ix_conversation_history_tokens_pending"),
        ]
        constraints = [
            models.CheckConstraint(condition=Q(role__in=Role.values), name="ck_conversation_history_role"),
        ]

    def __str__(self) -> str:
        return f"{self.role} #{self.turn_index if self.turn_index is not None else '-'} of call {self.call_id}"


class CallNote(models.Model):
    """A free-text note on a call, by an agent or an operator."""

    id = models.BigAutoField(primary_key=True)
    call = models.ForeignKey(Call, on_delete=models.CASCADE, related_name="notes")
    author = models.CharField(max_length=100, db_default="system")
    note_type = models.CharField(max_length=32, db_default="general")
    body = models.TextField()
    created_at = models.DateTimeField(db_default=Now())

    class Meta:
        managed = False
        db_table = "call_notes"

    def __str__(self) -> str:
        return f"{self.note_type} note on call {self.call_id}"


class AgentTransition(models.Model):
    """A hand-over between agents during a call."""

    id = models.BigAutoField(primary_key=True)
    call = models.ForeignKey(Call, on_delete=models.CASCADE, related_name="agent_transitions")
    from_agent = models.CharField(max_length=64, null=True, blank=True)
    to_agent = models.CharField(max_length=64)
    reason = models.TextField(null=True, blank=True)
    turn_index = models.IntegerField(null=True, blank=True)
    transitioned_at = models.DateTimeField(db_default=Now())

    class Meta:
        managed = False
        db_table = "agent_transitions"
        ordering = ["transitioned_at", "id"]

    def __str__(self) -> str:
        return f"{self.from_agent or 'start'} -> {self.to_agent}"


class TierEscalationEvent(models.Model):
    """A call moved up (or down) a service tier."""

    id = models.BigAutoField(primary_key=True)
    call = models.ForeignKey(Call, on_delete=models.CASCADE, related_name="tier_escalations")
    from_tier = models.CharField(max_length=16, choices=Tier.choices)
    to_tier = models.CharField(max_length=16, choices=Tier.choices)
    reason = models.TextField(null=True, blank=True)
    triggered_by = models.CharField(max_length=64, db_default="agent")
    escalated_at = models.DateTimeField(db_default=Now())

    class Meta:
        managed = False
        db_table = "tier_escalation_events"
        ordering = ["escalated_at", "id"]

    def __str__(self) -> str:
        return f"{self.from_tier} -> {self.to_tier}"


class BackfillStatus(models.TextChoices):
    RUNNING = "running"  # workers are on it (or were: a stopped heartbeat shows it stalled)
    PAUSED = "paused"  # an operator's brake: workers stopped at their next batch; resumes from its cursor
    SUCCEEDED = "succeeded"  # every row it visits has its values
    FAILED = "failed"  # a batch failed: resumable from its cursor after the fix
    INTERRUPTED = "interrupted"  # stopped by Ctrl-C or SIGTERM, or found dead: resumed by the next run
    CANCELLED = "cancelled"  # an operator's brake: ended; a later run starts afresh where rows still need it


class BackfillRun(models.Model):
    """One run of ``manage.py backfill_context`` for one backfill (``messages`` or ``calls``).

    Cooperating workers (``--workers``, or the same command on other hosts) share the run that
    is running; at most one runs per backfill. ``cursor`` is the highest id handed out in a
    batch; a run whose heartbeat stopped is resumed from there by the next one.
    """

    id = models.BigAutoField(primary_key=True)
    backfill = models.CharField(max_length=32)
    status = models.CharField(max_length=16, choices=BackfillStatus.choices, db_default=BackfillStatus.RUNNING)
    recompute = models.BooleanField(db_default=False)
    batch_size = models.IntegerField(db_default=500)
    started_at = models.DateTimeField(db_default=Now())
    heartbeat_at = models.DateTimeField(db_default=Now())
    finished_at = models.DateTimeField(null=True, blank=True)
    rows_total = models.BigIntegerField(null=True, blank=True, help_text="Rows to visit, counted at the start")
    rows_scanned = models.BigIntegerField(db_default=0)
    rows_changed = models.BigIntegerField(db_default=0)
    cursor = models.BigIntegerField(db_default=0)
    resumed_from = models.ForeignKey("self", null=True, blank=True, on_delete=models.SET_NULL, related_name="+")
    host = models.CharField(max_length=255, db_default="")
    pid = models.IntegerField(null=True, blank=True)
    error = models.TextField(null=True, blank=True)
    paused_by = models.CharField(max_length=150, null=True, blank=True)
    paused_at = models.DateTimeField(null=True, blank=True)
    cancelled_by = models.CharField(max_length=150, null=True, blank=True)
    batch_splits = models.IntegerField(db_default=0, help_text="Batches halved and retried after a timeout or deadlock")

    class Meta:
        managed = False
        db_table = "backfill_runs"
        ordering = ["-started_at", "-id"]
        # The operator's brake (admin buttons): a permission of its own, apart from viewing runs.
        permissions = [("control_backfillrun", "Can pause, resume and cancel backfill runs")]
        indexes = [models.Index(fields=["backfill", "started_at"], name="ix_backfill_runs_backfill_started_at")]
        constraints = [
            # One running run per backfill: a second invocation joins it instead of starting another.
            models.UniqueConstraint(fields=["backfill"], condition=Q(status="running"),
                                    name="uq_backfill_runs_one_running"),
        ]

    def __str__(self) -> str:
        return f"{self.backfill} run {self.pk} ({self.status})"


class BackfillBatch(models.Model):
    """A batch of ids (lo, hi] handed out to a worker and not yet committed.

    A worker processes a batch and deletes it in one transaction while holding its row lock, so
    a batch is never processed twice; a killed worker's batch is picked up by the next one.
    """

    id = models.BigAutoField(primary_key=True)
    run = models.ForeignKey(BackfillRun, on_delete=models.CASCADE, related_name="batches")
    backfill = models.CharField(max_length=32)
    lo = models.BigIntegerField()
    hi = models.BigIntegerField()
    claimed_at = models.DateTimeField(db_default=Now())

    class Meta:
        managed = False
        db_table = "backfill_batches"
        indexes = [models.Index(fields=["backfill", "id"], name="ix_backfill_batches_backfill_id")]

    def __str__(self) -> str:
        return f"{self.backfill} ids ({self.lo}, {self.hi}]"
