"""Metric time series for the admin's charts, drawn as inline SVG: no script, no CDN, nothing fetched."""
from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime, timedelta

from django.db.models import Avg, Model
from django.db.models.functions import Trunc

from operator_kit.svg import Box, fraction

# Windows an operator can pick, each with the bucket that keeps a chart between 24 and 360 points.
WINDOWS: dict[str, tuple[timedelta, str]] = {
    "6h": (timedelta(hours=6), "minute"),
    "24h": (timedelta(hours=24), "hour"),
    "7d": (timedelta(days=7), "hour"),
    "30d": (timedelta(days=30), "day"),
}
DEFAULT_WINDOW = "24h"
MAX_SERIES = 12  # one small chart per metric name; a page of dozens helps nobody

CHART_WIDTH = 560
CHART_HEIGHT = 140
PADDING = 4
BOX = Box(CHART_WIDTH, CHART_HEIGHT, left=PADDING, right=PADDING, top=PADDING, bottom=PADDING)


@dataclass(frozen=True)
class Series:
    """One metric's average per bucket, ready to draw."""

    name: str
    points: list[tuple[datetime, float]]

    @property
    def low(self) -> float:
        return min(value for _, value in self.points)

    @property
    def high(self) -> float:
        return max(value for _, value in self.points)

    @property
    def latest(self) -> float:
        return self.points[-1][1]

    def polyline(self, start: datetime, end: datetime) -> str:
        """Return SVG ``points`` for this series, time on x from ``start`` to ``end``, value on y."""
        span = (end - start).total_seconds() or 1.0
        coords = []
        for at, value in self.points:
            # A flat series sits mid-height rather than on the floor (``fraction``).
            x, y = BOX.x((at - start).total_seconds() / span), BOX.y(fraction(value, self.low, self.high))
            coords.append(f"{x:.1f},{y:.1f}")
        return " ".join(coords)


@dataclass(frozen=True)
class Chart:
    """Every series of one metric table over one window."""

    window: str
    start: datetime | None
    end: datetime | None
    series: list[Series]


def newest_recorded_at(model: type[Model]) -> datetime | None:
    """Return when the newest metric was recorded.

    Metrics are append-only, so the highest id is the newest row: the primary key answers at
    once, where ``MAX(recorded_at)`` would read the whole table (its index is BRIN).
    """
    return model.objects.order_by("-id").values_list("recorded_at", flat=True).first()


def metric_chart(model: type[Model], window: str = DEFAULT_WINDOW) -> Chart:
    """Return the average of each metric per bucket over ``window`` up to the newest sample."""
    if window not in WINDOWS:
        window = DEFAULT_WINDOW
    length, bucket = WINDOWS[window]
    end = newest_recorded_at(model)
    if end is None:
        return Chart(window=window, start=None, end=None, series=[])
    start = end - length
    rows = (model.objects.filter(recorded_at__gt=start, recorded_at__lte=end)
            .annotate(bucket=Trunc("recorded_at", bucket))
            .values_list("metric_name", "bucket")
            .annotate(average=Avg("value"))
            .order_by("metric_name", "bucket"))
    by_name: dict[str, list[tuple[datetime, float]]] = {}
    for name, at, average in rows:
        by_name.setdefault(name, []).append((at, float(average)))
    series = [Series(name, points) for name, points in sorted(by_name.items())[:MAX_SERIES]]
    return Chart(window=window, start=start, end=end, series=series)
