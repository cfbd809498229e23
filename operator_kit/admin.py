"""What every operator admin page shares: no full COUNT(*) on big tables, read-only history, links between pages.

Used by the apps' admin modules (``calls/admin.py``, ``monitoring/admin.py``); it knows none of them.
"""
from __future__ import annotations

from typing import Any

from django.contrib import admin
from django.contrib.admin.options import IncorrectLookupParameters
from django.contrib.admin.views.main import ChangeList
from django.core.paginator import Paginator
from django.db import connections
from django.http import HttpRequest
from django.urls import reverse
from django.utils.functional import cached_property
from django.utils.html import format_html

# Above this many rows (PostgreSQL's estimate), an unfiltered list shows the estimate instead of
# counting: COUNT(*) reads the whole table.
ESTIMATE_ABOVE_ROWS = 100_000


class EstimatedCountPaginator(Paginator):
    """Count exactly, except an unfiltered query on a big PostgreSQL table: use its estimate."""

    @cached_property
    def count(self) -> int:
        query = self.object_list.query
        connection = connections[self.object_list.db]
        if connection.vendor == "postgresql" and not query.where:
            with connection.cursor() as cursor:
                # The table as declared: a release reading through a version schema's view
                # (reautomation/release.py) has it qualified, and a view has no estimate.
                opts = self.object_list.model._meta
                cursor.execute("SELECT reltuples::bigint FROM pg_class WHERE oid = %s::regclass",
                               [opts.original_attrs.get("db_table", opts.db_table)])
                row = cursor.fetchone()
            if row and row[0] > ESTIMATE_ABOVE_ROWS:
                return int(row[0])
        return super().count


class OperatorChangeList(ChangeList):
    """A list whose date hierarchy refuses dates out of range (``?created_at__year=9999``) as bad input.

    Django computes the next period with ``date.replace(year=year + 1)``, which raises past year 9999.
    """

    def get_filters(self, request: HttpRequest) -> Any:
        try:
            return super().get_filters(request)
        except (ValueError, OverflowError) as exc:
            raise IncorrectLookupParameters(exc) from exc  # the admin answers with the list and "?e=1"


class OperatorAdmin(admin.ModelAdmin):
    """A list page that stays fast on millions of rows."""

    paginator = EstimatedCountPaginator
    show_full_result_count = False  # the second COUNT(*) over the unfiltered table
    show_facets = admin.ShowFacets.NEVER  # a COUNT per filter choice
    list_per_page = 50

    def get_changelist(self, request: HttpRequest, **kwargs: Any) -> type[ChangeList]:
        return OperatorChangeList

    def get_fieldsets(self, request: HttpRequest, obj: Any = None) -> list[tuple[str | None, dict[str, Any]]]:
        """On the add page, leave out the read-only fields: the database fills them when the row is made."""
        fieldsets = super().get_fieldsets(request, obj)
        if obj is not None:
            return fieldsets
        filled_later = set(self.get_readonly_fields(request, obj))
        kept = []
        for name, options in fieldsets:
            fields = [field for field in options["fields"] if field not in filled_later]
            if fields:
                kept.append((name, {**options, "fields": fields}))
        return kept


class ReadOnlyAdmin(OperatorAdmin):
    """History (messages, traces, metrics): operators look, nobody edits."""

    def has_add_permission(self, request: HttpRequest, obj: Any = None) -> bool:
        return False

    def has_change_permission(self, request: HttpRequest, obj: Any = None) -> bool:
        return False

    def has_delete_permission(self, request: HttpRequest, obj: Any = None) -> bool:
        return False


class ReadOnlyInline(admin.TabularInline):
    """An inline list of history on a parent's page."""

    extra = 0
    can_delete = False
    show_change_link = False

    def has_add_permission(self, request: HttpRequest, obj: Any = None) -> bool:
        return False

    def has_change_permission(self, request: HttpRequest, obj: Any = None) -> bool:
        return False


def admin_link(obj: object, label: str | None = None) -> str:
    """Return a link to ``obj``'s admin page."""
    if obj is None:
        return "-"
    opts = obj._meta
    url = reverse(f"admin:{opts.app_label}_{opts.model_name}_change", args=[obj.pk])
    return format_html('<a href="{}">{}</a>', url, label or str(obj))
