"""Data migrations (backfills). They are not revisions: run them between an expand revision and
its contract, with ``manage.py backfill_context``; these modules are the guide's entry points to it."""
from __future__ import annotations

import os
import sys

from django.core.management import execute_from_command_line


def run_backfill(only: str) -> None:
    """Run ``manage.py backfill_context --only ONLY`` with this process's command-line options."""
    os.environ.setdefault("DJANGO_SETTINGS_MODULE", "reautomation.settings")
    execute_from_command_line(["manage.py", "backfill_context", "--only", only, *sys.argv[1:]])
