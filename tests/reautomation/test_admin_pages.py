"""Every admin page, as an operator uses it, on PostgreSQL built by the revisions."""
from __future__ import annotations

import re
from pathlib import Path
from typing import Iterator

import pytest
import sqlalchemy as sa
from django.apps import apps
from django.contrib import admin
from django.db import connection
from django.test import Client
from django.urls import reverse

import operator_kit.admin
from calls import backfill
from calls.models import BackfillRun, Call
from calls.sample_data import generate_sample_data
from monitoring.models import WorkflowTrace
from schema_engine import database, state

DATA_TABLES = ["backfill_batches", "backfill_runs", "agent_executions", "workflow_traces", "performance_metrics",
               "system_metrics", "tier_escalation_events", "agent_transitions", "call_notes",
               "conversation_history", "calls", "contacts"]


@pytest.fixture
def operator_data(django_db_setup: None, django_db_blocker) -> Iterator[None]:
    """Sample data written (and committed) by the real generator and backfill, removed after."""
    url = database.sqlalchemy_url()
    with database.connect(url) as conn:
        generate_sample_data(connection=conn, calls=25, seed=3)
    backfill.backfill_context(url=url)
    yield
    with database.connect(url) as conn:
        conn.execute(sa.text(f"TRUNCATE {', '.join(DATA_TABLES)} RESTART IDENTITY CASCADE"))


pytestmark = pytest.mark.django_db(transaction=True)

OPERATOR_MODELS = [m for m in apps.get_models() if m._meta.app_label in ("calls", "monitoring")]


def test_every_model_has_an_admin() -> None:
    missing = [m.__name__ for m in OPERATOR_MODELS if not admin.site.is_registered(m) and m.__name__ != "BackfillBatch"]
    assert missing == []


@pytest.mark.parametrize("model", [m for m in OPERATOR_MODELS if admin.site.is_registered(m)], ids=lambda m: m.__name__)
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
    for query, expected in (({"status__exact": "failed"}, Call.objects.filter(status="failed")),
                            ({"tier__exact": "tier2"}, Call.objects.filter(tier="tier2")),
                            ({"context_pruned__exact": "1"}, Call.objects.filter(context_pruned=True))):
        listing = admin_client.get(url, query)
        assert listing.status_code == 200
        shown = listing.context_data["cl"]
        assert shown.result_count == expected.count() < Call.objects.count()  # the filter filtered
        assert {c.pk for c in shown.result_list} == set(expected.values_list("pk", flat=True)[:50])
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
    for name in ("calls_conversationmessage", "monitoring_workflowtrace", "monitoring_systemmetric",
                 "calls_backfillrun"):
        assert admin_client.get(reverse(f"admin:{name}_add")).status_code == 403


def test_anonymous_users_are_sent_to_the_login_page(client: Client) -> None:
    response = client.get(reverse("admin:calls_call_changelist"))
    assert response.status_code == 302 and reverse("admin:login") in response["Location"]


def test_big_unfiltered_lists_use_the_estimate_not_count(admin_client: Client, operator_data: None,
                                                         monkeypatch) -> None:
    monkeypatch.setattr(operator_kit.admin, "ESTIMATE_ABOVE_ROWS", 10)  # the sample is small; the rule is the same
    with connection.cursor() as cursor:
        cursor.execute("ANALYZE conversation_history")
    from django.test.utils import CaptureQueriesContext

    with CaptureQueriesContext(connection) as queries:
        assert admin_client.get(reverse("admin:calls_conversationmessage_changelist")).status_code == 200
    sql = [q["sql"] for q in queries.captured_queries]
    assert any("reltuples" in s for s in sql)
    assert not any(s.startswith("SELECT COUNT(*)") and "conversation_history" in s for s in sql)


def test_operations_page_shows_schema_state_and_each_backfills_latest_run(admin_client: Client,
                                                                         operator_data: None) -> None:
    page = admin_client.get(reverse("admin:operations")).content.decode()
    head = state.status().heads[0]
    assert re.search(rf'id="current-revision">{head}<', page)
    assert re.search(rf'id="head-revision">{head}<', page)
    assert "up to date" in page
    for run in BackfillRun.objects.all():
        assert f'href="{reverse("admin:calls_backfillrun_change", args=[run.pk])}"' in page
    assert 'id="pending-rows"' not in page  # counting reads whole tables: only when asked
    counted = admin_client.get(reverse("admin:operations"), {"count": "1"}).content.decode()
    assert re.search(r"<th scope=\"row\">messages</th><td>0</td>", counted)


def test_operations_page_names_a_revision_file_that_cannot_be_imported(admin_client: Client, operator_data: None,
                                                                        scratch_migrations: Path) -> None:
    (scratch_migrations / "versions" / "007_broken.py").write_text('"""say """hi"""\n')
    response = admin_client.get(reverse("admin:operations"))
    assert response.status_code == 200
    schema = response.content.decode()
    schema = schema[schema.index('id="schema-status"'):schema.index('id="replica-status"')]
    assert re.search(r'<p class="errornote">a revision file cannot be imported: \S*/versions/007_broken.py:1: '
                     r"SyntaxError: [^<]+</p>", schema)


def test_operations_page_lists_pending_and_changed_revisions_and_invalid_indexes(admin_client: Client,
                                                                                 operator_data: None) -> None:
    status = state.status()
    previous = state.script_directory().get_revision(status.heads[0]).down_revision
    with connection.cursor() as cursor:
        cursor.execute("CREATE INDEX ix_scratch_invalid ON contacts (city)")
        # What a killed CREATE INDEX CONCURRENTLY leaves behind.
        cursor.execute("UPDATE pg_index SET indisvalid = false WHERE indexrelid = 'ix_scratch_invalid'::regclass")
        cursor.execute("UPDATE alembic_version SET version_num = %s", [previous])
        # As if 003's file had been edited since it was applied.
        cursor.execute("UPDATE alembic_revision_checksums SET sha256 = reverse(sha256) "
                       "WHERE revision = '003_context_management' RETURNING sha256")
        (edited,) = cursor.fetchone()
    try:
        page = admin_client.get(reverse("admin:operations")).content.decode()
    finally:
        with connection.cursor() as cursor:
            cursor.execute("DROP INDEX ix_scratch_invalid")
            cursor.execute("UPDATE alembic_version SET version_num = %s", [status.heads[0]])
            cursor.execute("UPDATE alembic_revision_checksums SET sha256 = reverse(sha256) WHERE sha256 = %s",
                           [edited])
    changed = page[page.index('id="changed-revisions"'):]
    assert "the SQL their upgrade or downgrade renders is not what was recorded when they ran" in changed
    assert re.findall(r"<tr><td><code>(\w+)</code></td></tr>", changed[:changed.index("</table>")]) == [
        "003_context_management"]
    pending = page[page.index('id="pending-revisions"'):]
    assert f"<code>{status.heads[0]}</code>" in pending
    assert "1 pending" in page and "migrate_schema upgrade head" in page
    invalid = page[page.index('id="invalid-indexes"'):]
    assert "<code>ix_scratch_invalid</code></td><td>contacts" in invalid


def test_metrics_page_draws_every_metric_without_the_network(admin_client: Client, operator_data: None) -> None:
    from monitoring.models import PerformanceMetric, SystemMetric

    page = admin_client.get(reverse("admin:metrics"), {"window": "30d"}).content.decode()
    names = set(PerformanceMetric.objects.values_list("metric_name", flat=True)) | set(
        SystemMetric.objects.values_list("metric_name", flat=True))
    assert names and {f'data-metric="{name}"' for name in names} <= set(re.findall(r'data-metric="[^"]+"', page))
    lines = re.findall(r'<polyline points="([^"]*)"', page)
    assert len(lines) == len(names)
    for line in lines:
        xs = [float(point.split(",")[0]) for point in line.split()]
        assert len(xs) >= 2 and xs == sorted(xs)  # a line through time, left to right
    # Nothing is fetched from elsewhere: every script, style and image comes from this server.
    external = re.findall(r'(?:src|href)="((?:https?:)?//[^"]*)"', page)
    assert external == []


@pytest.mark.parametrize("window", ["6h", "24h", "7d", "30d", "bogus"])
def test_metrics_page_answers_for_every_window(admin_client: Client, operator_data: None, window: str) -> None:
    response = admin_client.get(reverse("admin:metrics"), {"window": window})
    assert response.status_code == 200
    assert response.context["window"] == (window if window != "bogus" else "24h")


def test_date_hierarchy_offers_the_range_without_a_distinct_scan(admin_client: Client, operator_data: None) -> None:
    from django.test.utils import CaptureQueriesContext

    with connection.cursor() as cursor:
        cursor.execute("UPDATE calls SET created_at = CASE WHEN id % 3 = 0 THEN timestamptz '2025-11-15 12:00Z' "
                       "WHEN id % 3 = 1 THEN timestamptz '2026-01-10 12:00Z' ELSE timestamptz '2026-04-20 12:00Z' END")
    url = reverse("admin:calls_call_changelist")
    with CaptureQueriesContext(connection) as queries:
        years = admin_client.get(url).content.decode()
    assert not any("DISTINCT" in q["sql"].upper() for q in queries.captured_queries)
    assert "created_at__year=2025" in years and "created_at__year=2026" in years
    months = admin_client.get(url, {"created_at__year": "2026"}).content.decode()
    assert re.findall(r"created_at__month=(\d+)", months) == ["1", "2", "3", "4"]  # across the range, in order
    listed = admin_client.get(url, {"created_at__year": "2025", "created_at__month": "11"})
    assert {c.pk for c in listed.context["cl"].result_list} == set(Call.objects.filter(id__in=[
        c.id for c in Call.objects.all() if c.id % 3 == 0]).values_list("pk", flat=True))


def test_call_page_query_count_does_not_grow_with_the_conversation(admin_client: Client, operator_data: None) -> None:
    from django.db.models import Count
    from django.test.utils import CaptureQueriesContext

    calls = list(Call.objects.annotate(n=Count("messages")).order_by("n"))
    shortest, longest = calls[0], calls[-1]
    assert longest.n > shortest.n
    admin_client.get(reverse("admin:calls_call_change", args=[shortest.pk]))  # warms Django's content-type cache
    for call in (shortest, longest):
        with CaptureQueriesContext(connection) as queries:
            assert admin_client.get(reverse("admin:calls_call_change", args=[call.pk])).status_code == 200
        sql = [q["sql"] for q in queries.captured_queries]
        # One query per table shown (session, user, call, contact, each inline, traces), whatever the length.
        assert sum('FROM "conversation_history"' in s for s in sql) == 1
        assert len(sql) <= 10, "\n".join(s[:80] for s in sql)


def test_index_links_to_the_operations_pages(admin_client: Client) -> None:
    page = admin_client.get(reverse("admin:index")).content.decode()
    assert f'href="{reverse("admin:operations")}"' in page and f'href="{reverse("admin:metrics")}"' in page


@pytest.mark.parametrize("name", ["admin:operations", "admin:metrics", "admin:index"])
def test_operator_pages_are_staff_only(client: Client, name: str) -> None:
    response = client.get(reverse(name))
    assert response.status_code == 302 and reverse("admin:login") in response["Location"]


def test_call_search_by_phone_number_call_sid_or_contact_last_name(admin_client: Client, operator_data: None) -> None:
    url = reverse("admin:calls_call_changelist")
    call = (Call.objects.filter(contact__isnull=False, call_sid__isnull=False)
            .select_related("contact").order_by("pk").first())

    def found(term: str) -> set[int]:
        return {c.pk for c in admin_client.get(url, {"q": term}).context["cl"].result_list}

    same_number = Call.objects.filter(phone_number=call.phone_number).values_list("pk", flat=True)
    assert found(call.phone_number) == set(same_number)
    assert found(call.call_sid) == {call.pk}
    by_name = set(Call.objects.filter(contact__last_name=call.contact.last_name).values_list("pk", flat=True))
    assert call.pk in by_name and found(call.contact.last_name) == by_name
    assert found("Nobody-By-This-Name") == set()
