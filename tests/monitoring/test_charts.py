"""``monitoring/charts.py``: averages per bucket over a window up to the newest sample, drawn inside the chart."""
from __future__ import annotations

from datetime import datetime, timedelta, timezone
from typing import Iterator

import pytest

from monitoring import charts
from monitoring.models import PerformanceMetric, SystemMetric

pytestmark = pytest.mark.django_db(transaction=True)
NEWEST = datetime(2026, 11, 30, 12, 0, tzinfo=timezone.utc)


@pytest.fixture
def latency_samples(django_db_setup: None) -> Iterator[None]:
    """Two samples an hour for 30 hours: 100 and 300 (average 200), then 1000 in the newest hour."""
    rows = []
    for hours_back in range(1, 31):
        at = NEWEST - timedelta(hours=hours_back)
        rows += [PerformanceMetric(metric_name="latency_ms", value=100, recorded_at=at),
                 PerformanceMetric(metric_name="latency_ms", value=300, recorded_at=at + timedelta(minutes=10))]
    rows.append(PerformanceMetric(metric_name="latency_ms", value=1000, recorded_at=NEWEST))
    PerformanceMetric.objects.bulk_create(rows)
    yield
    PerformanceMetric.objects.all().delete()


def test_the_chart_averages_each_bucket_up_to_the_newest_sample(latency_samples: None) -> None:
    chart = charts.metric_chart(PerformanceMetric, "24h")
    assert chart.end == NEWEST and chart.start == NEWEST - timedelta(hours=24)
    (series,) = chart.series
    assert series.name == "latency_ms" and series.latest == 1000
    # The window's first hour holds only its second sample (the first is at the window's start,
    # which is left out); every later hour holds both.
    assert [value for _, value in series.points[:-1]] == [300.0] + [200.0] * 23
    assert all(chart.start < at <= chart.end for at, _ in series.points[1:])


def test_the_line_stays_inside_the_chart(latency_samples: None) -> None:
    chart = charts.metric_chart(PerformanceMetric, "7d")
    points = [tuple(map(float, pair.split(","))) for pair in chart.series[0].polyline(chart.start, chart.end).split()]
    assert all(charts.PADDING <= x <= charts.CHART_WIDTH - charts.PADDING for x, _ in points)
    assert all(charts.PADDING <= y <= charts.CHART_HEIGHT - charts.PADDING for _, y in points)
    assert min(y for _, y in points) == charts.PADDING  # the highest value touches the top


def test_an_unknown_window_falls_back_and_an_empty_table_draws_nothing(latency_samples: None) -> None:
    assert charts.metric_chart(PerformanceMetric, "1y").window == charts.DEFAULT_WINDOW
    assert charts.metric_chart(SystemMetric).series == []
