"""Who may see what in the admin, and pages that must answer whatever an operator types."""
from __future__ import annotations

from typing import Iterator

import pytest
from django.apps import apps
from django.contrib import admin
from django.contrib.auth.models import Group, Permission, User
from django.test import Client
from django.urls import reverse

pytestmark = pytest.mark.django_db(transaction=True)


@pytest.fixture
def staff_client(django_db_setup: None) -> Iterator[tuple[Client, User]]:
    """A staff user with no permission at all, logged in."""
    user = User.objects.create_user("staffer", password="a-long-passphrase", is_staff=True)
    client = Client()
    client.force_login(user)
    yield client, user
    user.delete()
    Group.objects.filter(name="viewers").delete()


def test_every_model_has_its_permissions_after_upgrading(django_db_setup: None) -> None:
    """Django's post-migrate step never runs; the upgrade wrote content types and permissions."""
    for model in apps.get_models():
        opts = model._meta
        codenames = set(Permission.objects.filter(content_type__app_label=opts.app_label,
                                                  content_type__model=opts.model_name)
                        .values_list("codename", flat=True))
        assert {f"{action}_{opts.model_name}" for action in opts.default_permissions} <= codenames, opts.label


def test_a_viewer_group_with_view_permissions_works(staff_client: tuple[Client, User]) -> None:
    client, user = staff_client
    viewers = Group.objects.create(name="viewers")
    viewers.permissions.set(Permission.objects.filter(codename__startswith="view_"))
    user.groups.add(viewers)
    assert client.get(reverse("admin:calls_call_changelist")).status_code == 200
    assert client.get(reverse("admin:operations")).status_code == 200
    assert client.get(reverse("admin:metrics")).status_code == 200
    assert client.get(reverse("admin:calls_call_add")).status_code == 403  # viewing is not adding


@pytest.mark.parametrize("page", ["admin:operations", "admin:metrics", "admin:calls_call_changelist"])
def test_staff_without_permissions_sees_nothing(staff_client: tuple[Client, User], page: str) -> None:
    client, _ = staff_client
    assert client.get(reverse(page)).status_code == 403


def test_the_add_call_page_answers_and_adds(admin_client: Client) -> None:
    page = admin_client.get(reverse("admin:calls_call_add"))
    assert page.status_code == 200
    assert 'name="phone_number"' in page.content.decode()
    assert "total_context_tokens" not in page.content.decode()  # the database fills it
    form = {"phone_number": "+15555550123", "direction": "outbound", "status": "queued", "tier": "tier1",
            "escalation_count": "0", "total_cost": "0"}
    for prefix in ("messages", "notes", "agent_transitions", "tier_escalations"):
        form.update({f"{prefix}-TOTAL_FORMS": "0", f"{prefix}-INITIAL_FORMS": "0"})
    admin_client.post(reverse("admin:calls_call_add"), form)
    from calls.models import Call

    assert Call.objects.filter(phone_number="+15555550123").exists()
    Call.objects.filter(phone_number="+15555550123").delete()


@pytest.mark.parametrize("model", [m for m in apps.get_models() if admin.site.is_registered(m)],
                         ids=lambda m: m.__name__)
def test_every_add_page_answers(admin_client: Client, model: type) -> None:
    opts = model._meta
    response = admin_client.get(reverse(f"admin:{opts.app_label}_{opts.model_name}_add"))
    assert response.status_code in (200, 403)  # 403: history, which nobody adds to


@pytest.mark.parametrize("changelist", ["admin:calls_call_changelist", "admin:calls_conversationmessage_changelist",
                                        "admin:monitoring_workflowtrace_changelist"])
@pytest.mark.parametrize("query", [{"created_at__year": "9999"}, {"created_at__year": "0"},
                                   {"created_at__year": "2026", "created_at__month": "13"},
                                   {"created_at__year": "9999", "created_at__month": "12", "created_at__day": "31"},
                                   {"started_at__year": "9999"}],
                         ids=["year-9999", "year-0", "month-13", "last-day-9999", "started-9999"])
def test_out_of_range_dates_in_the_query_answer_without_a_500(admin_client: Client, changelist: str,
                                                             query: dict[str, str]) -> None:
    response = admin_client.get(reverse(changelist), query)
    assert response.status_code < 500


def test_the_schema_page_names_a_recorded_revision_the_code_does_not_know(admin_client: Client) -> None:
    """After the code was rolled back past an applied revision: the page says which, not a 500."""
    from django.db import connection

    with connection.cursor() as cursor:
        cursor.execute("SELECT version_num FROM alembic_version")
        (recorded,) = cursor.fetchone()
        cursor.execute("UPDATE alembic_version SET version_num = '9f3e2a1b7c4d'")
    try:
        page = admin_client.get(reverse("admin:operations"))
    finally:
        with connection.cursor() as cursor:
            cursor.execute("UPDATE alembic_version SET version_num = %s", [recorded])
    assert page.status_code == 200
    text = page.content.decode()
    assert "revision 9f3e2a1b7c4d, which this code does not know" in text and "stamp REV --purge" in text


def test_the_schema_page_says_what_a_pooler_without_a_session_url_lacks(admin_client: Client, settings) -> None:
    settings.DATABASE_POOL_MODE, settings.MIGRATION_DATABASE = "transaction", None
    page = admin_client.get(reverse("admin:operations"), {"count": "1"})
    assert page.status_code == 200
    assert page.content.decode().count("set MIGRATION_DATABASE_URL to the primary itself") == 2  # schema and counts
