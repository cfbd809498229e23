"""Command output for writers that write whole lines themselves (Alembic's listings, tqdm's bar)."""
from __future__ import annotations

from django.core.management.base import OutputWrapper


class RawOutput:
    """A text stream over a command's ``stdout`` that adds no newline of its own.

    Django's ``OutputWrapper`` ends every write with a newline; Alembic writes whole lines, and
    tqdm redraws its bar with carriage returns, so both need the stream as it is.
    """

    def __init__(self, wrapper: OutputWrapper) -> None:
        self.wrapper = wrapper

    def write(self, text: str) -> int:
        self.wrapper.write(text, ending="")
        return len(text)

    def flush(self) -> None:
        self.wrapper.flush()

    def isatty(self) -> bool:
        return self.wrapper.isatty()
