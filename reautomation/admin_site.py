"""The operators' admin site: Django's, plus a page for schema and backfill state and one of metric charts."""
from __future__ import annotations

from typing import Any

from django.conf import settings
from django.contrib import admin
from django.core.exceptions import PermissionDenied
from django.db.models import Max
from django.http import HttpRequest, HttpResponse
from django.template.response import TemplateResponse
from django.urls import URLPattern, path
from django.utils.safestring import mark_safe

from calls import backfill
from calls.backfill import control
from calls.models import BackfillRun
from monitoring import charts
from monitoring.models import PerformanceMetric, SystemMetric
from reautomation import replica_reads
from schema_engine import checksums, database, errors, replicas, state
from schema_engine.forecast import chart as forecast_chart
from schema_engine.forecast import stored

# What each of the site's own pages needs: the view permission of what it shows.
OPERATIONS_PERMISSION = "calls.view_backfillrun"
METRICS_PERMISSIONS = ("monitoring.view_performancemetric", "monitoring.view_systemmetric")


def require_any(request: HttpRequest, *permissions: str) -> None:
    """Refuse (403) a user who has none of ``permissions``."""
    if not any(request.user.has_perm(permission) for permission in permissions):
        raise PermissionDenied


class OperatorAdminSite(admin.AdminSite):
    site_header = "REAutomation operations"
    site_title = "REAutomation admin"
    index_title = "Calls, conversations, traces and metrics"

    def get_urls(self) -> list[URLPattern]:
        # admin_view: staff only, anyone else is sent to the login page.
        return [
            path("operations/", self.admin_view(self.operations_view), name="operations"),
            path("metrics/", self.admin_view(self.metrics_view), name="metrics"),
            *super().get_urls(),
        ]

    def operations_view(self, request: HttpRequest) -> HttpResponse:
        """Schema state (current revision, head, pending, changed applied revisions, INVALID indexes),
        the last forecast (``migrate_schema forecast``) with its chart, each backfill's latest run."""
        require_any(request, OPERATIONS_PERMISSION)
        context: dict[str, Any] = {**self.each_context(request), "title": "Schema and backfills"}
        try:
            context["schema"] = state.status()
            context["changed_revisions"] = [c.revision for c in checksums.verify() if c.changed]
            with database.connect() as conn:
                context["replicas"] = replicas.replicas(conn)
                if not all(replica.readable for replica in context["replicas"]):
                    context["monitor_grant"] = replicas.monitor_grant(conn)
        except errors.SchemaError as exc:
            context["schema_error"] = str(exc)
        context.update(last_forecast_context())
        if replica_reads.REPLICA in settings.DATABASES:
            context["replica_view"] = replicas.replica_view(
                database.sqlalchemy_url(settings.DATABASES[replica_reads.REPLICA]))
        latest_ids = BackfillRun.objects.values("backfill").annotate(latest=Max("id")).values_list("latest", flat=True)
        may_brake = request.user.has_perm(control.PERMISSION)
        context["latest_runs"] = [
            {"run": run, "state": control.describe(run),
             "brake": [(action, control.ACTIONS[action]) for action in control.actions_for(run.status)]
             if may_brake else []}
            for run in BackfillRun.objects.filter(id__in=list(latest_ids)).order_by("backfill")]
        # Counting rows still to backfill reads whole tables: only when asked.
        if request.GET.get("count") == "1":
            try:
                context["pending_rows"] = backfill.pending_rows()
            except (backfill.BackfillError, errors.SchemaError) as exc:
                context["pending_error"] = str(exc)
        return TemplateResponse(request, "admin/operations.html", context)

    def metrics_view(self, request: HttpRequest) -> HttpResponse:
        """Performance and system metrics over a window, one small chart per metric."""
        require_any(request, *METRICS_PERMISSIONS)
        window = request.GET.get("window", charts.DEFAULT_WINDOW)
        sections = []
        for model in (PerformanceMetric, SystemMetric):
            chart = charts.metric_chart(model, window)
            sections.append({
                "title": model._meta.verbose_name_plural.capitalize(),
                "model_name": model._meta.model_name,
                "chart": chart,
                "drawn": [(series, series.polyline(chart.start, chart.end)) for series in chart.series],
            })
        context = {
            **self.each_context(request),
            "title": "Metrics",
            "window": sections[0]["chart"].window,  # an unknown window falls back to the default
            "windows": list(charts.WINDOWS),
            "sections": sections,
            "width": charts.CHART_WIDTH,
            "height": charts.CHART_HEIGHT,
        }
        return TemplateResponse(request, "admin/metrics.html", context)


def last_forecast_context() -> dict[str, Any]:
    """The last forecast kept (FORECAST_LAST_FILE) and its chart, or why it cannot be shown; nothing when none ran."""
    try:
        last = stored.load(settings.FORECAST_LAST_FILE)
    except errors.StoredForecastUnreadable as exc:
        return {"forecast_error": str(exc)}
    if last is None:
        return {}
    # The chart escapes every text it takes from the forecast (revision names, docs, the database's display URL).
    return {"last_forecast": last, "forecast_chart": mark_safe(forecast_chart.svg(last.forecast))}
