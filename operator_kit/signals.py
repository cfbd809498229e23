"""SIGTERM as Ctrl-C, for commands whose Ctrl-C path rolls back what was in flight and says so."""
from __future__ import annotations

import contextlib
import signal
import threading
from types import FrameType
from typing import Iterator


@contextlib.contextmanager
def sigterm_as_ctrl_c() -> Iterator[None]:
    """Inside: SIGTERM raises ``KeyboardInterrupt`` once; later ones are ignored until the process ends.

    ``timeout``, a CI runner's cancel and ``systemctl stop`` send SIGTERM, often to the whole process
    group as well as to the command (so twice): a second one must not cut short the rollback and
    the line that says what the first one left.
    """
    if threading.current_thread() is not threading.main_thread():
        yield  # only the main thread may set signal handlers
        return
    interrupted = False

    def interrupt(signum: int, frame: FrameType | None) -> None:
        nonlocal interrupted
        interrupted = True
        signal.signal(signal.SIGTERM, signal.SIG_IGN)
        raise KeyboardInterrupt

    previous = signal.signal(signal.SIGTERM, interrupt)
    try:
        yield
    finally:
        if not interrupted:
            signal.signal(signal.SIGTERM, previous)
