"""Every admin page, as an operator uses it, on PostgreSQL built by the revisions."""
from __future__ import annotations

import re
from typing import Iterator

import pytest
import sqlalchemy as sa
from django.apps import apps
from django.contrib import admin
from django.db import connection
from django.test import Client
from django.urls import reverse

from calls import backfill
from calls.models import BackfillRun, Call
from calls.sample_data import generate_sample_data
from monitoring.models import WorkflowTrace
from reautomation import database, schema

DATA_TABLES = ["backfill_batches", "backfill_runs", "agent_executions", "workflow_traces", "performance_metrics",
               "system_metrics", "tier_escalation_events", "agent_transitions", "call_notes",
               "conversation_history", "calls", "contacts"]


@pytest.fixture
def operator_data(django_db_setup: None, django_db_blocker) -> Iterator[None]:
    """Sample data written (and committed) by the real generator and backfill, removed after."""
    url = database.sqlalchemy_url()
    with schema.connect(url) as conn:
        generate_sample_data(connection=conn, calls=25, seed=3)
    backfill.backfill_context(url=url)
    yield
    with schema.connect(url) as conn:
        conn.execute(sa.text(f"TRUNCATE {', '.join(DATA_TABLES)} RESTART IDENTITY CASCADE"))


pytestmark = pytest.mark.django_db(transaction=True)

OPERATOR_MODELS = [m for m in apps.get_models() if m._meta.app_label in ("calls", "monitoring")]


def test_every_model_has_an_admin() -> None:
    missing = [m.__name__ for m in OPERATOR_MODELS if m not in admin.site._registry and m.__name__ != "BackfillBatch"]
    assert missing == []


@pytest.mark.parametrize("model", [m for m in OPERATOR_MODELS if m in admin.site._registry], ids=lambda m: m.__name__)
def test_list_and_detail_pages_answer(admin_client: Client, operator_data: None, model: type) -> None:
    opts = model._meta
    listing = admin_client.get(reverse(f"admin:{opts.app_label}_{opts.model_name}_changelist"))
    assert listing.status_code == 200
    first = model.objects.order_by("pk").first()
    assert first is not None, f"the sample data has no {opts.model_name}"
    detail = admin_client.get(reverse(f"admin:{opts.app_label}_{opts.model_name}_change", args=[first.pk]))
    assert detail.status_code == 200


def test_call_page_shows_its_conversation_in_turn_order(admin_client: Client, operator_data: None) -> None:
    call = Call.objects.filter(messages__turn_index__isnull=False).distinct().order_by("pk").first()
    page = admin_client.get(reverse("admin:calls_call_change", args=[call.pk])).content.decode()
    messages = list(call.messages.all())  # the model's order: turn index, then time, then id
    conversation = page[page.index('id="messages-group"'):page.index('id="notes-group"')]
    shown_turns = re.findall(r'class="field-turn_index">\s*<p>(\d+)</p>', conversation)
    shown_tokens = re.findall(r'class="field-token_count">\s*<p>(\d+)</p>', conversation)
    assert [int(t) for t in shown_turns] == sorted(m.turn_index for m in messages) == [m.turn_index for m in messages]
    assert [int(t) for t in shown_tokens] == [m.token_count for m in messages]
    assert re.search(r'class="field-role">\s*<p>System</p>', conversation)
    for trace in WorkflowTrace.objects.filter(call=call):
        assert trace.trace_id in page


def test_filters_and_search(admin_client: Client, operator_data: None) -> None:
    url = reverse("admin:calls_call_changelist")
    call = Call.objects.order_by("pk").first()
    assert admin_client.get(url, {"status__exact": "failed"}).status_code == 200
    assert admin_client.get(url, {"context_pruned__exact": "1"}).status_code == 200
    found = admin_client.get(url, {"q": call.phone_number}).content.decode()
    assert call.phone_number in found
    trace = WorkflowTrace.objects.order_by("pk").first()
    assert trace.trace_id in admin_client.get(reverse("admin:monitoring_workflowtrace_changelist"),
                                              {"q": trace.trace_id}).content.decode()


def test_backfill_runs_are_listed_with_progress(admin_client: Client, operator_data: None) -> None:
    page = admin_client.get(reverse("admin:calls_backfillrun_changelist")).content.decode()
    assert BackfillRun.objects.filter(status="succeeded").count() == 2
    assert "100%" in page and "succeeded" in page


def test_history_is_read_only(admin_client: Client, operator_data: None) -> None:
    for name in ("calls_conversationmessage", "monitoring_workflowtrace", "monitoring_systemmetric", "calls_backfillrun"):
        assert admin_client.get(reverse(f"admin:{name}_add")).status_code == 403


def test_anonymous_users_are_sent_to_the_login_page(client: Client) -> None:
    response = client.get(reverse("admin:calls_call_changelist"))
    assert response.status_code == 302 and reverse("admin:login") in response["Location"]


def test_big_unfiltered_lists_use_the_estimate_not_count(admin_client: Client, operator_data: None, monkeypatch) -> None:
    from reautomation import admin_base

    monkeypatch.setattr(admin_base, "ESTIMATE_ABOVE_ROWS", 10)  # the sample is small; the rule is the same
    with connection.cursor() as cursor:
        cursor.execute("ANALYZE conversation_history")
    from django.test.utils import CaptureQueriesContext

    with CaptureQueriesContext(connection) as queries:
        assert admin_client.get(reverse("admin:calls_conversationmessage_changelist")).status_code == 200
    sql = [q["sql"] for q in queries.captured_queries]
    assert any("reltuples" in s for s in sql)
    assert not any(s.startswith("SELECT COUNT(*)") and "conversation_history" in s for s in sql)
