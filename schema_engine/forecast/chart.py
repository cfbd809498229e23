"""A forecast's picture: the replayed statements' latency over time, each revision's start and end marked (SVG).

One self-contained SVG (its style inside, nothing fetched), the same text for a file
(``migrate_schema forecast --chart PATH``, written 0600) and for the admin's schema page. Time
runs on x from the replay's start; latency on y on a log scale (a statement stuck 10 s behind a
lock and the usual 2 ms both show). Each sample is one dot; each revision a shaded span with a
start line and an end line (red when it failed on the copy).
"""
from __future__ import annotations

import math
from pathlib import Path
from xml.sax.saxutils import escape, quoteattr

from operator_kit.files import write_private
from operator_kit.svg import Box, fraction, log_fraction
from schema_engine.forecast.result import Forecast

WIDTH = 720
HEIGHT = 260
BOX = Box(WIDTH, HEIGHT, left=60, right=10, top=10, bottom=30)
FLOOR_SECONDS = 1e-4  # the y axis starts no lower than 0.1 ms: below that is the clock's noise
STYLE = (".fc-grid{stroke:#ddd;stroke-width:1}.fc-axis{font:11px sans-serif;fill:#555}"
         ".fc-samples{fill:none;stroke:#2a6fdb;stroke-width:2.5;stroke-linecap:round;opacity:.6}"
         ".revision-span{fill:#f2b705;opacity:.15}.revision-start,.revision-end{stroke:#8a6d00;stroke-width:1.5}"
         ".revision-end.failed{stroke:#c0392b}.fc-label{font:11px sans-serif;fill:#8a6d00}")


def svg(forecast: Forecast) -> str:
    """Return the chart of ``forecast`` as SVG text."""
    end = max([s.at for s in forecast.samples] + [r.started + r.seconds for r in forecast.revisions] + [1.0])
    latencies = [s.seconds for s in forecast.samples if s.seconds > 0]
    low = 10 ** math.floor(math.log10(max(min(latencies, default=1e-3), FLOOR_SECONDS)))
    high = 10 ** math.ceil(math.log10(max(max(latencies, default=1.0), low * 10)))
    parts = [f'<svg xmlns="http://www.w3.org/2000/svg" viewBox="0 0 {WIDTH} {HEIGHT}" width="{WIDTH}" '
             f'height="{HEIGHT}" role="img" aria-label="replayed statements\' latency over time, revisions marked">',
             f"<title>Forecast of {escape(forecast.database)}: {escape(forecast.workload)}</title>",
             f"<style>{STYLE}</style>"]
    decade = low
    while decade <= high * 1.0001:
        y = BOX.y(log_fraction(decade, low, high))
        parts.append(f'<line class="fc-grid" x1="{BOX.left}" x2="{WIDTH - BOX.right}" y1="{y:.1f}" y2="{y:.1f}"/>'
                     f'<text class="fc-axis" x="{BOX.left - 4}" y="{y + 4:.1f}" text-anchor="end">'
                     f"{_seconds_text(decade)}</text>")
        decade *= 10
    step = _time_step(end)
    tick = 0.0
    while tick <= end:
        x = BOX.x(fraction(tick, 0.0, end))
        parts.append(f'<text class="fc-axis" x="{x:.1f}" y="{HEIGHT - 12}" text-anchor="middle">{tick:g}s</text>')
        tick += step
    for rev in forecast.revisions:
        x0, x1 = BOX.x(fraction(rev.started, 0.0, end)), BOX.x(fraction(rev.started + rev.seconds, 0.0, end))
        outcome = f"failed: {rev.error}" if rev.error else f"{rev.seconds:.1f}s"
        parts.append(f'<g class="revision" data-revision={quoteattr(rev.revision)}>'
                     f"<title>{escape(f'{rev.revision}: {rev.doc} ({outcome})')}</title>"
                     f'<rect class="revision-span" x="{x0:.1f}" y="{BOX.ceiling:.1f}" width="{max(x1 - x0, 0.5):.1f}" '
                     f'height="{BOX.floor - BOX.ceiling:.1f}"/>'
                     f'<line class="revision-start" x1="{x0:.1f}" x2="{x0:.1f}" y1="{BOX.ceiling:.1f}" '
                     f'y2="{BOX.floor:.1f}"/>'
                     f'<line class="revision-end{" failed" if rev.error else ""}" x1="{x1:.1f}" x2="{x1:.1f}" '
                     f'y1="{BOX.ceiling:.1f}" y2="{BOX.floor:.1f}"/>'
                     f'<text class="fc-label" x="{x0 + 2:.1f}" y="{BOX.ceiling + 11:.1f}">'
                     f"{escape(rev.revision[:16])}</text></g>")
    # One path for every sample (a zero-length segment with a round cap is a dot): small for 100,000 of them.
    dots = "".join(f"M{BOX.x(fraction(s.at, 0.0, end)):.1f} {BOX.y(log_fraction(max(s.seconds, low), low, high)):.1f}h0"
                   for s in forecast.samples)
    parts.append(f'<path class="fc-samples" data-samples="{len(forecast.samples)}" d="{dots}"/>' if dots else
                 f'<text class="fc-axis" x="{WIDTH / 2:.0f}" y="{HEIGHT / 2:.0f}" text-anchor="middle">'
                 "no replayed statement measured</text>")
    parts.append("</svg>")
    return "\n".join(parts) + "\n"


def write_chart(forecast: Forecast, path: Path) -> Path:
    """Write the chart of ``forecast`` to ``path``, readable by its owner only (0600); return the path."""
    write_private(path, svg(forecast))
    return path


def _seconds_text(seconds: float) -> str:
    return f"{seconds * 1000:g} ms" if seconds < 1 else f"{seconds:g} s"


def _time_step(end: float) -> float:
    """A round step (1, 2 or 5 times a power of ten) that puts between 4 and 10 ticks on ``end`` seconds."""
    for power in range(-2, 7):
        for base in (1, 2, 5):
            step = base * 10.0 ** power
            if end / step <= 10:
                return step
    return 10.0 ** 7
