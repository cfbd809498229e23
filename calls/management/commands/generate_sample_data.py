"""``manage.py generate_sample_data``: realistic contacts, calls, conversations, traces and metrics."""
from __future__ import annotations

import time
from typing import Any

from django.core.management.base import BaseCommand, CommandError, CommandParser

from calls.sample_data import generate_sample_data
from schema_engine import database, errors

# About 25 million messages: a large benchmark. Beyond it a typo (an extra zero) would fill the disk.
MAX_CALLS = 1_000_000
MAX_DAYS = 3650


class Command(BaseCommand):
    help = "Generate realistic sample data (about 25 messages a call) for demos, tests and benchmarks."
    requires_system_checks: list[str] = []

    def add_arguments(self, parser: CommandParser) -> None:
        parser.add_argument("--calls", type=int, default=1000,
                            help=f"how many calls to create (default 1000, at most {MAX_CALLS:,}); "
                                 "run again to add more")
        parser.add_argument("--seed", type=int, default=42, help="random seed; the same seed gives the same data")
        parser.add_argument("--max-turns", type=int, default=60,
                            help="longest conversation of an answered call (default 60; at least 8)")
        parser.add_argument("--days", type=int, default=90, help="spread the calls over this many past days")

    def handle(self, *args: Any, **options: Any) -> None:
        if not 1 <= options["calls"] <= MAX_CALLS:
            raise CommandError(f"--calls {options['calls']} is out of range: give 1 to {MAX_CALLS:,}")
        if not 1 <= options["days"] <= MAX_DAYS:
            raise CommandError(f"--days {options['days']} is out of range: give 1 to {MAX_DAYS:,}")
        started = time.perf_counter()

        def progress(done: int, total: int) -> None:
            if options["verbosity"] > 1 or (options["verbosity"] and done % 50_000 == 0):
                self.stdout.write(f"  {done:,}/{total:,} calls")

        try:
            with database.connect() as connection:
                counts = generate_sample_data(
                    connection=connection, calls=options["calls"], seed=options["seed"], days=options["days"],
                    max_turns=options["max_turns"], on_progress=progress,
                )
        except (errors.SchemaError, ValueError) as exc:  # ValueError: an option out of range, e.g. --max-turns
            raise CommandError(str(exc)) from exc
        seconds = time.perf_counter() - started
        self.stdout.write(self.style.SUCCESS(
            f"Created {counts.calls:,} calls with {counts.messages:,} messages, {counts.contacts:,} contacts, "
            f"{counts.workflow_traces:,} traces ({counts.agent_executions:,} agent executions), "
            f"{counts.performance_metrics + counts.system_metrics:,} metric samples in {seconds:.1f}s"
        ))
