"""Placeholder for the measurement (written by another helper; replaced at the merge)."""
from __future__ import annotations

import sqlalchemy as sa

from schema_engine.forecast.result import Forecast
from schema_engine.progress import Reporter, ignore


def forecast(*, url: sa.URL | str | None = None, capture: str | None = None, reporter: Reporter = ignore,
             sample_batches: int = 20) -> Forecast:
    """Measure the pending revisions on a copy of the database under replayed traffic (not written here)."""
    raise NotImplementedError
