#!/usr/bin/env python
"""Median answer time of every admin page at 300k calls and 3M messages on PostgreSQL (run by hand).

    .venv/bin/python bench/admin_pages.py                         # seeds bench_admin_pages, keeps it
    .venv/bin/python bench/admin_pages.py --reuse                 # measures the kept database again
    .venv/bin/python bench/admin_pages.py --drop                  # ... and drops it afterwards

Seeds a PostgreSQL database with calls/sample_data.py (answered conversations up to 18 turns, so
300k calls make about 3M messages), upgrades it to head with the revisions and runs the real
backfill. Then, for each page, logged in as a superuser through Django's test client (the whole
request: middleware, queries, templates; no network), prints the median of ``--repeat`` requests
after a warm-up, and the slowest query count. Target: every page <= 300 ms.
"""
from __future__ import annotations

import statistics
import time
import warnings

import environment

NAME = "bench_admin_pages"
# Nothing is collected for this in-process run: WhiteNoise's "no STATIC_ROOT" warning is noise here.
warnings.filterwarnings("ignore", message="No directory at")
warnings.filterwarnings("ignore", message="DateTimeField .* received a naive datetime")
# The pages are measured through Django's own connection: its default database is the seeded one.
environment.set_up(database=NAME, SECURE_SSL_REDIRECT="false", ALLOWED_HOSTS="testserver",
                   STATICFILES_BACKEND="django.contrib.staticfiles.storage.StaticFilesStorage")

from django.contrib import admin
from django.contrib.auth.models import User
from django.db import connection, reset_queries
from django.test import Client
from django.test.utils import CaptureQueriesContext
from django.urls import reverse

from bench.seeding import vacuum_analyze
from calls import backfill
from calls.models import Call, Contact
from calls.sample_data import generate_sample_data
from monitoring.models import WorkflowTrace
from schema_engine import commands, database

TARGET_MS = 300


def seed(calls: int, max_turns: int) -> None:
    environment.fresh_database(NAME)
    url = database.sqlalchemy_url()
    started = time.perf_counter()
    commands.upgrade(revision="003_context_management", url=url)
    with database.connect(url) as conn:
        counts = generate_sample_data(connection=conn, calls=calls, max_turns=max_turns)
    print(f"seeded {counts.calls:,} calls, {counts.messages:,} messages, {counts.workflow_traces:,} traces "
          f"in {time.perf_counter() - started:.0f} s")
    started = time.perf_counter()
    commands.upgrade(revision="head", url=url)  # 004's indexes, built on the data as in production
    backfill.backfill_context(url=url, options=backfill.BackfillOptions(workers=2, batch_size=2000))
    vacuum_analyze(url)
    print(f"indexes, backfill and VACUUM ANALYZE in {time.perf_counter() - started:.0f} s")


def pages() -> list[tuple[str, str]]:
    """(label, URL) of every page an operator uses, with the filters and searches they use."""
    call = Call.objects.order_by("-id").first()
    busiest = Call.objects.filter(id__gt=call.id - 2000).order_by("-id")  # a long conversation, recent
    longest = max(busiest[:200], key=lambda c: c.messages.count())
    contact = Contact.objects.order_by("-id").first()
    trace = WorkflowTrace.objects.order_by("-id").first()
    calls_list = reverse("admin:calls_call_changelist")
    listed = [("index", reverse("admin:index")),
              ("schema and backfills", reverse("admin:operations")),
              ("metric charts, 24h", reverse("admin:metrics")),
              ("metric charts, 7d", reverse("admin:metrics") + "?window=7d")]
    for model in admin.site._registry:
        opts = model._meta
        if opts.app_label in ("calls", "monitoring"):
            listed.append((f"{opts.verbose_name_plural} list",
                           reverse(f"admin:{opts.app_label}_{opts.model_name}_changelist")))
            newest = model.objects.order_by("-pk").first()
            if newest is not None and opts.model_name != "call":
                listed.append((f"{opts.verbose_name} page", reverse(f"admin:{opts.app_label}_{opts.model_name}_change",
                                                                   args=[newest.pk])))
    year, month = call.created_at.year, call.created_at.month
    listed += [
        (f"call page ({longest.messages.count()} messages)", reverse("admin:calls_call_change", args=[longest.pk])),
        ("calls: status=failed", f"{calls_list}?status__exact=failed"),
        ("calls: tier=tier3", f"{calls_list}?tier__exact=tier3"),
        ("calls: context pruned", f"{calls_list}?context_pruned__exact=1"),
        ("calls: past 7 days", f"{calls_list}?created_at__gte={(call.created_at.date()).isoformat()}"),
        ("calls: date hierarchy, year", f"{calls_list}?created_at__year={year}"),
        ("calls: date hierarchy, month", f"{calls_list}?created_at__year={year}&created_at__month={month}"),
        ("calls: search phone number", f"{calls_list}?q={call.phone_number.replace('+', '%2B')}"),
        ("calls: search contact name", f"{calls_list}?q={contact.last_name}"),
        ("calls: page 100", f"{calls_list}?p=100"),
        ("contacts: search phone number",
         f"{reverse('admin:calls_contact_changelist')}?q={contact.phone_number.replace('+', '%2B')}"),
        ("messages: role=tool", f"{reverse('admin:calls_conversationmessage_changelist')}?role__exact=tool"),
        ("traces: search trace id", f"{reverse('admin:monitoring_workflowtrace_changelist')}?q={trace.trace_id}"),
        ("traces: status=error", f"{reverse('admin:monitoring_workflowtrace_changelist')}?status__exact=error"),
    ]
    return listed


def measure(client: Client, url: str, repeat: int) -> tuple[float, int]:
    for _ in range(2):  # warm-up: caches, plans, the buffer cache
        response = client.get(url)
        assert response.status_code == 200, (url, response.status_code)
    times = []
    for _ in range(repeat):
        started = time.perf_counter()
        with CaptureQueriesContext(connection) as queries:
            client.get(url)
        times.append((time.perf_counter() - started) * 1000)
    return statistics.median(times), len(queries.captured_queries)


def main() -> None:
    parser = environment.argument_parser(__doc__)
    parser.add_argument("--calls", type=int, default=300_000)
    parser.add_argument("--max-turns", type=int, default=18, help="answered calls' longest conversation")
    parser.add_argument("--repeat", type=int, default=15)
    parser.add_argument("--reuse", action="store_true", help=f"measure the database {NAME} left by an earlier run")
    parser.add_argument("--drop", action="store_true", help="drop the database at the end")
    args = parser.parse_args()
    if not args.reuse:
        seed(args.calls, args.max_turns)
    with connection.cursor() as cursor:
        cursor.execute("SELECT (SELECT count(*) FROM calls), (SELECT count(*) FROM conversation_history)")
        n_calls, n_messages = cursor.fetchone()
    print(f"database {NAME}: {n_calls:,} calls, {n_messages:,} messages; median of {args.repeat} requests each")
    user, _ = User.objects.get_or_create(username="bench", defaults={"is_staff": True, "is_superuser": True})
    client = Client()
    client.force_login(user)
    slowest = 0.0
    for label, url in pages():
        median, n_queries = measure(client, url, args.repeat)
        slowest = max(slowest, median)
        flag = "" if median <= TARGET_MS else f"  > {TARGET_MS} ms"
        print(f"  {label:<40} {median:7.1f} ms  {n_queries:3d} queries{flag}")
        reset_queries()
    print(f"slowest page median: {slowest:.1f} ms (target <= {TARGET_MS} ms)")
    if args.drop:
        connection.close()
        environment.drop_database(NAME)


if __name__ == "__main__":
    main()
