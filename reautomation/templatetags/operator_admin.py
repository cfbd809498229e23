"""Template tags of the operators' admin."""
from __future__ import annotations

import copy
import datetime
from typing import Any

from django import template
from django.contrib.admin.templatetags.admin_list import date_hierarchy
from django.contrib.admin.templatetags.base import InclusionAdminNode
from django.contrib.admin.views.main import ChangeList
from django.db import models
from django.db.models import Max, Min
from django.utils import timezone

register = template.Library()


class DateRange:
    """Stands in for a list's queryset in Django's date hierarchy.

    Django lists the years, months or days that occur with ``SELECT DISTINCT date_trunc(...)``,
    which reads every row matched: the whole table on the unfiltered page. Here they come from
    the first and last date (``MIN``/``MAX``, two index lookups), every period between them
    offered. A period with no rows shows an empty list when chosen.
    """

    def __init__(self, queryset: models.QuerySet) -> None:
        self.queryset = queryset
        self._bounds: dict[str, dict[str, Any]] = {}

    def aggregate(self, **kwargs: Any) -> dict[str, Any]:
        # Django asks for MIN and MAX, and so does _periods: one query for both.
        key = repr(sorted(kwargs.items()))
        if key not in self._bounds:
            self._bounds[key] = self.queryset.aggregate(**kwargs)
        return self._bounds[key]

    def datetimes(self, field_name: str, kind: str) -> list[datetime.datetime]:
        return self._periods(field_name, kind, as_datetimes=True)

    def dates(self, field_name: str, kind: str) -> list[datetime.date]:
        return self._periods(field_name, kind, as_datetimes=False)

    def _periods(self, field_name: str, kind: str, *, as_datetimes: bool) -> list[Any]:
        bounds = self.aggregate(first=Min(field_name), last=Max(field_name))
        first, last = bounds["first"], bounds["last"]
        if first is None or last is None:
            return []
        if isinstance(first, datetime.datetime):
            first, last = (timezone.localtime(v) if timezone.is_aware(v) else v for v in (first, last))
            first, last = first.date(), last.date()
        periods = []
        day = {"year": first.replace(month=1, day=1), "month": first.replace(day=1), "day": first}[kind]
        while day <= last:
            periods.append(day)
            if kind == "year":
                day = day.replace(year=day.year + 1)
            elif kind == "month":
                day = (day.replace(day=28) + datetime.timedelta(days=4)).replace(day=1)
            else:
                day = day + datetime.timedelta(days=1)
        if as_datetimes:
            tz = timezone.get_current_timezone() if timezone.is_aware(bounds["first"]) else None
            return [datetime.datetime(d.year, d.month, d.day, tzinfo=tz) for d in periods]
        return periods


def range_date_hierarchy(cl: ChangeList) -> dict[str, Any]:
    """Django's date hierarchy, its choices taken from the date range (see ``DateRange``)."""
    ranged = copy.copy(cl)
    ranged.queryset = DateRange(cl.queryset)
    return date_hierarchy(ranged)


@register.tag(name="range_date_hierarchy")
def range_date_hierarchy_tag(parser: template.base.Parser, token: template.base.Token) -> InclusionAdminNode:
    return InclusionAdminNode(parser, token, func=range_date_hierarchy, template_name="date_hierarchy.html",
                              takes_context=False)
