"""A forecast step in a process of its own, for ``test_forecast_base.py`` to kill mid-way.

``python forecast_child.py clone ROOT URL [MAX_RATE]``: copies the primary at URL into ROOT, as a
command would (SIGTERM turned into Ctrl-C), printing each event on a line (``folder FOLDER`` as
the copying starts); once the copy answers, prints ``ready PORT FOLDER`` and waits for its
standard input to close.

``python forecast_child.py capture ROOT URL OUT``: captures URL's statements into OUT for an hour,
printing ``capturing`` once the server logs every statement.
"""
from __future__ import annotations

import os
import sys
from pathlib import Path

import django

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))
os.environ.setdefault("DJANGO_SETTINGS_MODULE", "tests.settings")
django.setup()

from operator_kit.signals import sigterm_as_ctrl_c  # noqa: E402
from schema_engine.forecast import capture, clone  # noqa: E402
from schema_engine.progress import Event  # noqa: E402


def say(event: Event) -> None:
    print(type(event).__name__, event.describe(), flush=True)
    if isinstance(event, clone.CloneStarted):
        print("folder", event.folder, flush=True)
    if isinstance(event, capture.CaptureStarted):
        print("capturing", flush=True)


mode, root, url = sys.argv[1:4]
with sigterm_as_ctrl_c():
    if mode == "clone":
        with clone.cloned(url, root=Path(root), max_rate=(sys.argv[4] if len(sys.argv) > 4 else None),
                          reporter=say) as copy:
            print("ready", copy.port, copy.folder, flush=True)
            sys.stdin.read()
    else:
        capture.capture(Path(sys.argv[4]), url=url, seconds=3600, root=Path(root), reporter=say)
