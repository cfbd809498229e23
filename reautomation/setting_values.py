"""Typed readers for settings from the environment: a bad value stops start-up with one line naming the setting.

Settings such as durations reach SQL and shell commands; each is checked for its shape here,
so no setting ever becomes SQL or shell text of its own choosing.
"""
from __future__ import annotations

import math
import re

import environ
from django.core.exceptions import ImproperlyConfigured

# PostgreSQL's duration syntax for lock_timeout/statement_timeout: a number and an optional unit.
_DURATION = re.compile(r"\d+(\.\d+)?\s*(us|ms|s|min|h|d)?")


class InvalidSetting(ImproperlyConfigured):
    """A setting's value does not have the shape it needs."""


def _raw(env: environ.Env, name: str, default: object) -> str:
    return str(env.str(name, default=str(default))).strip()


def duration(env: environ.Env, name: str, *, default: str) -> str:
    """Return setting ``name`` as a PostgreSQL duration (``5s``, ``200ms``, ``30min``, ``0`` for none)."""
    value = _raw(env, name, default)
    if not _DURATION.fullmatch(value):
        raise InvalidSetting(f"{name}={value!r} is not a duration: give a number and a unit of us, ms, s, min, h "
                             "or d (e.g. 5s, 200ms, 30min)")
    return value


def count(env: environ.Env, name: str, *, default: int, minimum: int = 0, maximum: int | None = None) -> int:
    """Return setting ``name`` as a whole number of at least ``minimum`` (and at most ``maximum``)."""
    value = _raw(env, name, default)
    try:
        number = int(value)
    except ValueError:
        number = None
    if number is None or number < minimum or (maximum is not None and number > maximum):
        allowed = f"from {minimum} to {maximum}" if maximum is not None else f"of {minimum} or more"
        raise InvalidSetting(f"{name}={value!r} is not a whole number {allowed}")
    return number


def seconds(env: environ.Env, name: str, *, default: float, positive: bool = False) -> float:
    """Return setting ``name`` as a finite, non-negative (or with ``positive``, above 0) number of seconds."""
    value = _raw(env, name, default)
    try:
        number = float(value)
    except ValueError:
        number = math.nan
    if not math.isfinite(number) or number < 0 or (positive and number == 0):
        raise InvalidSetting(f"{name}={value!r} is not a number of seconds ({'above 0' if positive else '0 or more'})")
    return number


def choice(env: environ.Env, name: str, *, default: str, choices: tuple[str, ...]) -> str:
    """Return setting ``name``, one of ``choices``."""
    value = _raw(env, name, default)
    if value not in choices:
        raise InvalidSetting(f"{name}={value!r} is not one of {', '.join(choices)}")
    return value
