"""Admin for contacts, calls and what happens on a call, and the backfill runs."""
from __future__ import annotations

import re

from django.contrib import admin, messages
from django.core.exceptions import PermissionDenied
from django.db.models import Max, QuerySet
from django.http import Http404, HttpRequest, HttpResponse, HttpResponseRedirect
from django.template.response import TemplateResponse
from django.urls import path, reverse
from django.utils.html import format_html_join
from django.utils.text import Truncator

from calls.backfill import BackfillError, control
from calls.models import (
    AgentTransition,
    BackfillRun,
    Call,
    CallNote,
    Contact,
    ConversationMessage,
    TierEscalationEvent,
)
from operator_kit.admin import OperatorAdmin, ReadOnlyAdmin, ReadOnlyInline, admin_link

# What a search term on the calls page is taken to be (else: a contact's last name).
PHONE_NUMBER = re.compile(r"\+?[0-9]{7,15}")
CALL_SID = re.compile(r"CA[0-9a-f]{32}")


@admin.register(Contact)
class ContactAdmin(OperatorAdmin):
    list_display = ["phone_number", "first_name", "last_name", "email", "city", "lead_status", "do_not_call",
                    "created_at"]
    list_filter = ["lead_status", "do_not_call"]
    # Exact (case-sensitive) lookups: each is one unique or b-tree index lookup. Django's "=" prefix
    # means iexact, UPPER(column) = UPPER(term), which no index serves.
    search_fields = ["phone_number__exact", "last_name__exact", "email__exact"]
    search_help_text = "An exact phone number (+15551234567), last name or email."
    readonly_fields = ["created_at", "updated_at"]


class MessageInline(ReadOnlyInline):
    """The call's conversation in turn order, with each message's token count and importance."""

    model = ConversationMessage
    fields = ["turn_index", "role", "text", "token_count", "importance", "created_at"]
    readonly_fields = fields

    @admin.display(description="content")
    def text(self, message: ConversationMessage) -> str:
        return Truncator(message.content).chars(600)


class NoteInline(admin.TabularInline):
    model = CallNote
    extra = 0
    fields = ["created_at", "author", "note_type", "body"]
    readonly_fields = ["created_at"]


class TransitionInline(ReadOnlyInline):
    model = AgentTransition
    fields = ["transitioned_at", "from_agent", "to_agent", "turn_index", "reason"]
    readonly_fields = fields


class EscalationInline(ReadOnlyInline):
    model = TierEscalationEvent
    fields = ["escalated_at", "from_tier", "to_tier", "triggered_by", "reason"]
    readonly_fields = fields


@admin.register(Call)
class CallAdmin(OperatorAdmin):
    list_display = ["id", "phone_number", "contact_link", "status", "tier", "outcome", "duration_seconds",
                    "total_cost", "total_context_tokens", "context_pruned", "created_at"]
    list_display_links = ["id", "phone_number"]
    list_select_related = ["contact"]  # one query for the page, not one per row
    list_filter = ["status", "tier", "context_pruned", ("created_at", admin.DateFieldListFilter)]
    search_fields = ["phone_number__exact", "call_sid__exact", "contact__last_name__exact"]  # see get_search_results
    search_help_text = "An exact phone number (+15551234567), call SID or contact's last name."
    ordering = ["-created_at", "-id"]
    date_hierarchy = "created_at"
    raw_id_fields = ["contact"]  # never a <select> of every contact
    inlines = [MessageInline, NoteInline, TransitionInline, EscalationInline]
    readonly_fields = ["created_at", "updated_at", "total_context_tokens", "context_pruned", "pruning_count",
                       "workflow_trace_links"]
    fieldsets = [
        (None, {"fields": ["contact", "phone_number", "direction", "status", "tier", "outcome", "summary"]}),
        # Collapsed: the conversation below is what operators open a call for.
        ("Timing and cost", {"classes": ["collapse"], "fields": [
            "created_at", "updated_at", "started_at", "ended_at", "duration_seconds", "total_cost"]}),
        ("Voice agent", {"classes": ["collapse"], "fields": [
            "call_sid", "voice_provider", "voice_id", "current_agent", "escalation_count", "avg_response_latency_ms",
            "error_message"]}),
        ("Context", {"fields": ["total_context_tokens", "context_pruned", "pruning_count"]}),
        ("Traces", {"fields": ["workflow_trace_links"]}),
    ]

    def get_search_results(self, request: HttpRequest, queryset: QuerySet, search_term: str) -> tuple[QuerySet, bool]:
        """Search by what the term looks like: a phone number, a call SID, else a contact's last name.

        Each is one index lookup. Django would OR all the fields over the join to contacts
        (``phone_number = %s OR ... OR contacts.last_name = %s``), which no index serves.
        """
        term = search_term.strip()
        if not term:
            return queryset, False
        if PHONE_NUMBER.fullmatch(term):
            return queryset.filter(phone_number=term), False
        if CALL_SID.fullmatch(term):
            return queryset.filter(call_sid=term), False
        return queryset.filter(contact_id__in=Contact.objects.filter(last_name=term).values("id")), False

    @admin.display(description="contact", ordering="contact__last_name")
    def contact_link(self, call: Call) -> str:
        return admin_link(call.contact)

    @admin.display(description="workflow traces")
    def workflow_trace_links(self, call: Call) -> str:
        traces = call.workflow_traces.order_by("started_at")
        return format_html_join(", ", "{}", ((admin_link(t, t.trace_id),) for t in traces)) or "-"


@admin.register(ConversationMessage)
class ConversationMessageAdmin(ReadOnlyAdmin):
    list_display = ["id", "call_link", "turn_index", "role", "short_content", "token_count", "importance", "created_at"]
    list_select_related = ["call"]
    list_filter = ["role"]
    ordering = ["-id"]
    date_hierarchy = "created_at"

    @admin.display(description="call")
    def call_link(self, message: ConversationMessage) -> str:
        return admin_link(message.call, f"Call {message.call_id}")

    @admin.display(description="content")
    def short_content(self, message: ConversationMessage) -> str:
        return Truncator(message.content).chars(80)


@admin.register(AgentTransition)
class AgentTransitionAdmin(ReadOnlyAdmin):
    list_display = ["id", "call_id", "from_agent", "to_agent", "turn_index", "transitioned_at"]
    ordering = ["-id"]


@admin.register(TierEscalationEvent)
class TierEscalationEventAdmin(ReadOnlyAdmin):
    list_display = ["id", "call_id", "from_tier", "to_tier", "triggered_by", "escalated_at"]
    list_filter = ["to_tier"]
    ordering = ["-id"]


@admin.register(CallNote)
class CallNoteAdmin(OperatorAdmin):
    list_display = ["id", "call_id", "author", "note_type", "created_at"]
    list_filter = ["note_type"]
    raw_id_fields = ["call"]
    ordering = ["-id"]


@admin.register(BackfillRun)
class BackfillRunAdmin(ReadOnlyAdmin):
    """Each run of backfill_context: status, progress and errors; the operator's brake on the run's page."""

    list_display = ["id", "backfill", "state", "progress", "rows_scanned", "rows_changed", "recompute",
                    "started_at", "heartbeat_at", "finished_at", "host", "short_error"]
    list_filter = ["backfill", "status"]
    ordering = ["-started_at", "-id"]

    def get_urls(self) -> list:
        brake = self.admin_site.admin_view(self.brake_view)
        return [path("<int:run_id>/brake/<str:action>/", brake, name="calls_backfillrun_brake"), *super().get_urls()]

    def brake_view(self, request: HttpRequest, run_id: int, action: str) -> HttpResponse:
        """Confirm (GET), then pause, resume or cancel the run (POST); for users with the brake's permission."""
        if action not in control.ACTIONS or not request.user.has_perm(control.PERMISSION):
            raise PermissionDenied
        run = BackfillRun.objects.filter(pk=run_id).first()
        if run is None:
            raise Http404(f"no backfill run {run_id}")
        page = reverse("admin:calls_backfillrun_change", args=[run.pk])
        if request.method != "POST" and action not in control.actions_for(run.status):
            # an old run's URL (a bookmark, the browser's history): the brake would act on another run
            current = BackfillRun.objects.filter(backfill=run.backfill).aggregate(current=Max("id"))["current"]
            self.message_user(request, control.refusal(run_id=run.pk, backfill=run.backfill, status=run.status,
                                                       current=current, action=action), messages.ERROR)
            return HttpResponseRedirect(page)
        if request.method != "POST":
            return TemplateResponse(request, "admin/calls/backfillrun/brake_confirmation.html", {
                **self.admin_site.each_context(request), "title": f"{control.ACTIONS[action]} run {run.pk}?",
                "run": run, "action": action, "verb": control.ACTIONS[action], "opts": self.model._meta})
        try:
            if action == "resume":
                control.resume(only=[run.backfill], run_id=run.pk)
            else:
                getattr(control, action)(only=[run.backfill], run_id=run.pk, by=request.user.get_username())
        except BackfillError as exc:
            self.message_user(request, str(exc), messages.ERROR)
            return HttpResponseRedirect(page)
        done = control.DONE[action].capitalize()
        self.log_change(request, run, f"{done} the run (the operator's brake)")
        after = {"pause": "its workers stop after their batch and wait",
                 "resume": "workers waiting on it go on; if none are, run 'manage.py backfill_context' to continue "
                           "from its cursor",
                 "cancel": "its workers stop after their batch; a later run starts afresh"}[action]
        self.message_user(request, f"{done} {run}: {after}", messages.SUCCESS)
        return HttpResponseRedirect(page)

    def change_view(self, request: HttpRequest, object_id: str, form_url: str = "",
                    extra_context: dict | None = None) -> HttpResponse:
        run = BackfillRun.objects.filter(pk=object_id).first()
        allowed = request.user.has_perm(control.PERMISSION) and run is not None
        context = {**(extra_context or {}), "run_state": control.describe(run) if run else "",
                   "brake": ([(action, control.ACTIONS[action]) for action in control.actions_for(run.status)]
                             if allowed else [])}
        return super().change_view(request, object_id, form_url, extra_context=context)

    @admin.display(description="status", ordering="status")
    def state(self, run: BackfillRun) -> str:
        return control.describe(run)

    @admin.display(description="progress")
    def progress(self, run: BackfillRun) -> str:
        if not run.rows_total:
            return "-" if run.rows_scanned == 0 else f"{run.rows_scanned:,} rows"
        return f"{min(100.0, 100 * run.rows_scanned / run.rows_total):.0f}%"

    @admin.display(description="error")
    def short_error(self, run: BackfillRun) -> str:
        return Truncator(run.error or "").chars(80)
