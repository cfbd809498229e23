"""The last forecast, kept as one JSON file (``FORECAST_LAST_FILE``, 0600) for the admin's schema page.

A file rather than a table: a forecast is a report about the database, not a part of it; a table
would need a revision (and a revision that stores forecasts would itself be forecast), while the
file is written where the command runs and read where the admin runs (one host in this project's
deployment). Its shape is ``as_dict``'s, the same as ``migrate_schema forecast --json`` prints.
"""
from __future__ import annotations

import dataclasses
import json
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from operator_kit.files import write_private
from schema_engine.errors import StoredForecastUnreadable
from schema_engine.forecast.result import BackfillForecast, Forecast, LatencySample, LockHeld, RevisionForecast


@dataclass(frozen=True, kw_only=True)
class StoredForecast:
    """A forecast as it was judged when it ran: its problems, under the limits of that time."""

    forecast: Forecast
    problems: tuple[str, ...]
    limits: dict[str, float]
    saved_at: datetime


def as_dict(forecast: Forecast, *, problems: list[str], limits: dict[str, float]) -> dict[str, Any]:
    """The forecast, its verdict and the limits judged by, as JSON-ready data."""
    return {"safe": not problems, "problems": list(problems), "limits": dict(limits),
            "forecast": dataclasses.asdict(forecast)}


def forecast_from_dict(data: dict[str, Any]) -> Forecast:
    """Rebuild a ``Forecast`` from ``dataclasses.asdict``'s output; KeyError or TypeError when it is not one."""
    revisions = tuple(RevisionForecast(**{**rev, "locks": tuple(LockHeld(**lock) for lock in rev["locks"]),
                                          "rewritten": tuple(rev["rewritten"])}) for rev in data["revisions"])
    return Forecast(**{**data, "revisions": revisions,
                       "backfills": tuple(BackfillForecast(**fill) for fill in data["backfills"]),
                       "samples": tuple(LatencySample(**sample) for sample in data["samples"]),
                       "traffic_errors": tuple(data.get("traffic_errors", ()))})


def save(path: Path, forecast: Forecast, *, problems: list[str], limits: dict[str, float]) -> Path:
    """Write ``forecast`` as the last one to ``path`` (its folder made 0700 if missing; the file 0600)."""
    path = Path(path)
    body = {**as_dict(forecast, problems=problems, limits=limits),
            "saved_at": datetime.now(timezone.utc).isoformat(timespec="seconds")}
    write_private(path, json.dumps(body))
    return path


def load(path: Path) -> StoredForecast | None:
    """Return the last forecast saved at ``path``, or None when none was; StoredForecastUnreadable if it is not one."""
    path = Path(path)
    try:
        body = json.loads(path.read_text(encoding="utf-8"))
        return StoredForecast(forecast=forecast_from_dict(body["forecast"]), problems=tuple(body["problems"]),
                              limits=dict(body["limits"]), saved_at=datetime.fromisoformat(body["saved_at"]))
    except FileNotFoundError:
        return None
    except (OSError, ValueError, KeyError, TypeError) as exc:
        raise StoredForecastUnreadable(f"the last forecast ({path}) cannot be read ({type(exc).__name__}: {exc}); "
                                       "run 'manage.py migrate_schema forecast' again", path=str(path)) from exc
