"""Admin for agent traces and metrics: history, read-only."""
from __future__ import annotations

from django.contrib import admin

from monitoring.models import AgentExecution, PerformanceMetric, SystemMetric, WorkflowTrace
from operator_kit.admin import ReadOnlyAdmin, ReadOnlyInline, admin_link


class ExecutionInline(ReadOnlyInline):
    model = AgentExecution
    fields = ["started_at", "agent_name", "status", "model_name", "input_tokens", "output_tokens", "latency_ms",
              "cost", "error"]
    readonly_fields = fields


@admin.register(WorkflowTrace)
class WorkflowTraceAdmin(ReadOnlyAdmin):
    list_display = ["trace_id", "workflow_name", "status", "call_link", "started_at", "duration_ms", "total_tokens",
                    "total_cost"]
    list_select_related = ["call"]
    list_filter = ["status"]  # a filter without choices would SELECT DISTINCT over the whole table
    search_fields = ["trace_id__exact"]  # the unique index; "=" (iexact) would scan
    search_help_text = "An exact trace id."
    ordering = ["-started_at", "-id"]
    date_hierarchy = "started_at"
    inlines = [ExecutionInline]

    @admin.display(description="call")
    def call_link(self, trace: WorkflowTrace) -> str:
        return admin_link(trace.call, f"Call {trace.call_id}") if trace.call_id else "-"


@admin.register(AgentExecution)
class AgentExecutionAdmin(ReadOnlyAdmin):
    list_display = ["id", "agent_name", "status", "model_name", "latency_ms", "input_tokens", "output_tokens",
                    "started_at"]
    ordering = ["-id"]


@admin.register(PerformanceMetric)
class PerformanceMetricAdmin(ReadOnlyAdmin):
    list_display = ["id", "metric_name", "value", "unit", "agent_name", "call_id", "recorded_at"]
    ordering = ["-id"]
    chart_link = True  # the list page links to the metric charts


@admin.register(SystemMetric)
class SystemMetricAdmin(ReadOnlyAdmin):
    list_display = ["id", "metric_name", "value", "host", "recorded_at"]
    ordering = ["-id"]
    chart_link = True
