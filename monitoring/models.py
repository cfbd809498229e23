"""Agent observability: LangSmith workflow traces, agent executions and metric time series.

Tables are Alembic's (``managed = False``); see ``calls/models.py`` for how the shape is used.
"""
from __future__ import annotations

from decimal import Decimal

from django.contrib.postgres.indexes import BrinIndex
from django.db import models
from django.db.models.functions import Now


class WorkflowTrace(models.Model):
    """One run of an agent workflow (a LangSmith trace), usually for one call."""

    id = models.BigAutoField(primary_key=True)
    trace_id = models.CharField(max_length=64, unique=True, help_text="LangSmith run id")
    call = models.ForeignKey("calls.Call", null=True, blank=True, on_delete=models.SET_NULL,
                             related_name="workflow_traces")
    workflow_name = models.CharField(max_length=100)
    status = models.CharField(max_length=32, db_default="running")
    started_at = models.DateTimeField(db_default=Now())
    ended_at = models.DateTimeField(null=True, blank=True)
    duration_ms = models.IntegerField(null=True, blank=True)
    total_tokens = models.IntegerField(db_default=0)
    total_cost = models.DecimalField(max_digits=10, decimal_places=4, db_default=Decimal("0"))
    error = models.TextField(null=True, blank=True)
    metadata = models.JSONField(null=True, blank=True)

    class Meta:
        managed = False
        db_table = "workflow_traces"
        indexes = [
            models.Index(fields=["started_at"], name="ix_workflow_traces_started_at"),
            models.Index(fields=["status", "started_at"], name="ix_workflow_traces_status_started_at"),
        ]

    def __str__(self) -> str:
        return f"{self.workflow_name} {self.trace_id}"


class AgentExecution(models.Model):
    """One agent's step within a workflow trace."""

    id = models.BigAutoField(primary_key=True)
    trace = models.ForeignKey(WorkflowTrace, on_delete=models.CASCADE, related_name="executions")
    agent_name = models.CharField(max_length=64)
    status = models.CharField(max_length=32, db_default="success")
    model_name = models.CharField(max_length=64, null=True, blank=True)
    input_tokens = models.IntegerField(db_default=0)
    output_tokens = models.IntegerField(db_default=0)
    latency_ms = models.IntegerField(null=True, blank=True)
    cost = models.DecimalField(max_digits=10, decimal_places=6, db_default=Decimal("0"))
    error = models.TextField(null=True, blank=True)
    started_at = models.DateTimeField(db_default=Now())
    ended_at = models.DateTimeField(null=True, blank=True)

    class Meta:
        managed = False
        db_table = "agent_executions"
        ordering = ["started_at", "id"]
        indexes = [models.Index(fields=["agent_name", "started_at"], name="ix_agent_executions_agent_started_at")]

    def __str__(self) -> str:
        return f"{self.agent_name} ({self.status})"


class PerformanceMetric(models.Model):
    """An application-level measurement (latency, cost, tokens), optionally for one call."""

    id = models.BigAutoField(primary_key=True)
    metric_name = models.CharField(max_length=100)
    value = models.FloatField()
    unit = models.CharField(max_length=32, null=True, blank=True)
    agent_name = models.CharField(max_length=64, null=True, blank=True)
    call = models.ForeignKey("calls.Call", null=True, blank=True, on_delete=models.SET_NULL,
                             related_name="performance_metrics")
    recorded_at = models.DateTimeField(db_default=Now())

    class Meta:
        managed = False
        db_table = "performance_metrics"
        indexes = [
            models.Index(fields=["metric_name", "recorded_at"], name="ix_performance_metrics_name_recorded_at"),
            # Revision 004: time-series scans (BRIN on PostgreSQL, b-tree elsewhere).
            BrinIndex(fields=["recorded_at"], name="ix_performance_metrics_recorded_at"),
        ]

    def __str__(self) -> str:
        return f"{self.metric_name}={self.value}"


class SystemMetric(models.Model):
    """A host-level measurement (CPU, memory, active calls) sampled over time."""

    id = models.BigAutoField(primary_key=True)
    metric_name = models.CharField(max_length=100)
    value = models.FloatField()
    host = models.CharField(max_length=100, db_default="")
    recorded_at = models.DateTimeField(db_default=Now())

    class Meta:
        managed = False
        db_table = "system_metrics"
        indexes = [
            models.Index(fields=["metric_name", "recorded_at"], name="ix_system_metrics_name_recorded_at"),
            BrinIndex(fields=["recorded_at"], name="ix_system_metrics_recorded_at"),
        ]

    def __str__(self) -> str:
        return f"{self.metric_name}={self.value} on {self.host}"
