"""One progress channel from the engine (and the apps' long runs) to whoever shows it.

As Django's ``migrate`` has one ``progress_callback``: library code sends typed ``Event``s to the
one ``Reporter`` it is given, and never prints. ``migrate_schema`` renders them for a person, the
plain ``alembic`` CLI logs them, a test collects them. Each kind of event is a frozen dataclass
subclassing ``Event``, built with keywords, named for what happened (``RevisionApplied``).
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Callable


@dataclass(frozen=True)
class Event:
    """Something that happened while the engine worked; subclasses say what."""

    def describe(self) -> str:
        """Say what happened in one line: the same words for a person (a command) and a log (the plain CLI)."""
        return type(self).__name__


Reporter = Callable[[Event], None]


def ignore(event: Event) -> None:
    """The reporter of a caller that wants no progress."""
