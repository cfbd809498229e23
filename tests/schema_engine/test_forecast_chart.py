"""The forecast's chart (SVG: a dot per replayed statement, a start and end line per revision), and the admin's copy."""
from __future__ import annotations

import re
import stat
import xml.etree.ElementTree as ET
from pathlib import Path

import pytest
from django.test import Client
from django.urls import reverse

from schema_engine import errors
from schema_engine.forecast import chart, stored
from schema_engine.forecast.result import Forecast, LatencySample
from tests.schema_engine.forecast_values import forecast, revision

SVG = "{http://www.w3.org/2000/svg}"


def dots(root: ET.Element) -> list[tuple[float, float]]:
    """The samples' (x, y), read back from the one path that draws them."""
    [path] = root.iter(f"{SVG}path")
    return [(float(x), float(y)) for x, y in re.findall(r"M([\d.]+) ([\d.]+)h0", path.get("d", ""))]


def test_the_chart_has_a_start_and_end_marker_per_revision_and_a_dot_per_sample() -> None:
    fc = forecast(revision("004_a", started=5.0, seconds=10.0),
                  revision("005_b", started=20.0, seconds=3.0, error="boom"), samples=300)
    root = ET.fromstring(chart.svg(fc))
    groups = [g for g in root.iter(f"{SVG}g") if g.get("class") == "revision"]
    assert [g.get("data-revision") for g in groups] == ["004_a", "005_b"]
    marks = []
    for group in groups:
        lines = {line.get("class"): float(line.get("x1", "nan")) for line in group.iter(f"{SVG}line")}
        assert set(lines) in ({"revision-start", "revision-end"}, {"revision-start", "revision-end failed"})
        marks.append(sorted(lines.values()))
    (a0, a1), (b0, b1) = marks
    assert a0 < a1 < b0 < b1  # in time order, each span as long as its revision relative to the other
    assert (a1 - a0) == pytest.approx((b1 - b0) * 10 / 3, rel=0.02)
    drawn = dots(root)
    assert len(drawn) == 300 == int(next(root.iter(f"{SVG}path")).get("data-samples", "0"))
    assert [x for x, _ in drawn] == sorted(x for x, _ in drawn)
    slow, usual = drawn[49], drawn[48]  # every 50th statement took 2.5s: drawn higher (SVG's y grows down)
    assert slow[1] < usual[1] - 50


def test_the_time_axis_places_a_sample_where_it_ended() -> None:
    fc = Forecast(database="db", workload="w", copy_bytes=0, copy_seconds=0.0,
                  revisions=(revision(started=0.0, seconds=100.0),), backfills=(),
                  samples=(LatencySample(at=0.0, seconds=0.01), LatencySample(at=50.0, seconds=0.01)))
    (x0, _), (x50, _) = dots(ET.fromstring(chart.svg(fc)))
    assert x0 == chart.BOX.x(0.0) and x50 == pytest.approx(chart.BOX.x(0.5), abs=0.1)


def test_text_from_the_forecast_is_escaped() -> None:
    fc = forecast(revision('011_<"&">', doc="drop <table> & more"), samples=2)
    root = ET.fromstring(chart.svg(fc))
    [group] = [g for g in root.iter(f"{SVG}g") if g.get("class") == "revision"]
    assert group.get("data-revision") == '011_<"&">'
    assert group.findtext(f"{SVG}title", "").startswith('011_<"&">: drop <table> & more')


def test_a_forecast_without_samples_still_draws_its_revisions() -> None:
    root = ET.fromstring(chart.svg(forecast(revision())))
    assert not list(root.iter(f"{SVG}path"))
    assert "no replayed statement measured" in "".join(root.itertext())
    assert len([g for g in root.iter(f"{SVG}g") if g.get("class") == "revision"]) == 1


def test_the_chart_file_is_its_owners_only_even_where_one_was(tmp_path: Path) -> None:
    target = tmp_path / "forecast.svg"
    target.write_text("old")
    target.chmod(0o644)
    assert chart.write_chart(forecast(revision(), samples=4), target) == target
    assert stat.S_IMODE(target.stat().st_mode) == 0o600
    assert len(dots(ET.parse(target).getroot())) == 4
    assert [p.name for p in tmp_path.iterdir()] == ["forecast.svg"]  # no temporary file left


def test_a_damaged_last_forecast_is_one_line(tmp_path: Path) -> None:
    (tmp_path / "last.json").write_text('{"forecast": {}}')
    with pytest.raises(errors.StoredForecastUnreadable, match=r"run 'manage.py migrate_schema forecast' again$"):
        stored.load(tmp_path / "last.json")
    assert stored.load(tmp_path / "none.json") is None


@pytest.mark.django_db(transaction=True)
def test_the_schema_page_shows_the_last_forecast_and_its_chart(admin_client: Client, settings, tmp_path: Path) -> None:
    settings.FORECAST_LAST_FILE = tmp_path / "forecast" / "last.json"
    page = admin_client.get(reverse("admin:operations")).content.decode()
    assert "No forecast yet: <code>manage.py migrate_schema forecast</code>" in page
    fc = forecast(revision("004_indexes"), revision("006_plain_index", longest_wait=7.0), samples=20)
    stored.save(settings.FORECAST_LAST_FILE, fc, problems=["revision 006_plain_index made ... <wait>"],
                limits={"FORECAST_MAX_WRITER_WAIT_SECONDS": 5.0})
    assert stat.S_IMODE(settings.FORECAST_LAST_FILE.parent.stat().st_mode) == 0o700
    page = admin_client.get(reverse("admin:operations")).content.decode()
    section = page[page.index('id="last-forecast"'):page.index('id="replica-status"')]
    assert re.search(r'id="forecast-verdict">\s*refused: 1 limit\(s\) passed', section)
    assert "<li>revision 006_plain_index made ... &lt;wait&gt;</li>" in section  # escaped by the template
    assert section.count('class="forecast-revision"') == 2
    svg = section[section.index("<svg"):section.index("</svg>") + len("</svg>")]
    assert len(dots(ET.fromstring(svg))) == 20
    settings.FORECAST_LAST_FILE.write_text("not json")
    page = admin_client.get(reverse("admin:operations")).content.decode()
    assert re.search(r'<p class="errornote">the last forecast \(\S+last.json\) cannot be read', page)
