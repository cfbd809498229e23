"""Inline SVG charts' shared drawing: a plot box and where a value falls in it (no script, no library).

``monitoring/charts.py`` (the admin's metric charts) and ``schema_engine/forecast/chart.py`` (a
forecast's latency over time) both place values in a box this way; each draws its own marks.
"""
from __future__ import annotations

import math
from dataclasses import dataclass


def fraction(value: float, low: float, high: float) -> float:
    """Where ``value`` falls between ``low`` and ``high`` (0 to 1); a flat range puts everything mid-way."""
    if high <= low:
        return 0.5
    return min(1.0, max(0.0, (value - low) / (high - low)))


def log_fraction(value: float, low: float, high: float) -> float:
    """As ``fraction`` on a log scale (``low`` and ``high`` above 0); values at or under 0 sit at the floor."""
    if value <= 0:
        return 0.0
    return fraction(math.log10(value), math.log10(low), math.log10(high))


@dataclass(frozen=True)
class Box:
    """A chart's drawing area: ``width`` x ``height`` pixels, the plot inset by a margin on each side."""

    width: int
    height: int
    left: int = 4
    right: int = 4
    top: int = 4
    bottom: int = 4

    def x(self, share: float) -> float:
        """The x of a point ``share`` (0 to 1) of the way from the plot's left edge to its right."""
        return self.left + (self.width - self.left - self.right) * share

    def y(self, share: float) -> float:
        """The y of a point ``share`` (0 to 1) of the way up from the plot's floor (SVG's y grows downwards)."""
        return self.top + (self.height - self.top - self.bottom) * (1 - share)

    @property
    def floor(self) -> float:
        return self.y(0.0)

    @property
    def ceiling(self) -> float:
        return self.y(1.0)
