"""``manage.py backfill_context``: token counts, importance and call context fields for existing data, and the
columns expand revisions declare."""
from __future__ import annotations

import getpass
import socket
import time
from typing import Any

from django.core.management.base import BaseCommand, CommandError, CommandParser
from tqdm import tqdm

from calls import backfill
from calls.backfill import control, health
from calls.tokens import TokenEncodingUnavailable
from operator_kit.output import RawOutput
from operator_kit.signals import sigterm_as_ctrl_c
from schema_engine import errors
from schema_engine.progress import Event

# Exit codes besides 0 and 1 (an error): interrupted by Ctrl-C or SIGTERM; cancelled by an operator.
EXIT_CODES = {backfill.BackfillInterrupted: 130, backfill.BackfillCancelled: 3}


class Command(BaseCommand):
    help = (
        "Fill conversation_history.token_count/importance, then calls.total_context_tokens/"
        "context_pruned/pruning_count, for rows that lack them; then the new columns of applied expand "
        "revisions (expand_<revision>). Batched, idempotent, resumable; several workers or hosts cooperate on one run."
    )
    requires_system_checks: list[str] = []

    def add_arguments(self, parser: CommandParser) -> None:
        parser.add_argument("--batch-size", type=int, default=None,
                            help="ids per batch (default: sized so that a batch takes BACKFILL_BATCH_SECONDS)")
        parser.add_argument("--only", "--backfill", dest="only",
                            help=f"run one backfill: {', '.join(backfill.BACKFILLS)} or a fill expand_<revision> "
                                 "(default: every one, in that order, then the fills of applied expand revisions)")
        parser.add_argument("--recompute", action="store_true", help="recompute rows that already have values")
        parser.add_argument("--dry-run", action="store_true", help="count what would change; write nothing")
        parser.add_argument("--workers", type=int, default=None,
                            help="parallel workers; more than 1 are processes forked from this one "
                                 "(default: this host's cores, at most half the database's free connections)")
        parser.add_argument("--max-rows-per-second", type=float, default=None, help="throttle for live systems")
        parser.add_argument("--batch-pause", type=float, default=0.0, dest="batch_pause",
                            help="seconds each worker waits between batches")
        parser.add_argument("--stale-after", type=float, default=120.0,
                            help="seconds without a heartbeat before a running run is taken as dead and resumed")
        brake = parser.add_mutually_exclusive_group()
        brake.add_argument("--pause", action="store_const", const="pause", dest="brake",
                           help="pause the running run (with --only: of that backfill): "
                                "its workers wait after their batch")
        brake.add_argument("--resume", action="store_const", const="resume", dest="brake",
                           help="resume the paused run from its cursor, and work on it here too")
        brake.add_argument("--cancel", action="store_const", const="cancel", dest="brake",
                           help="cancel the running or paused run: its workers stop; a later run starts afresh")

    def handle(self, *args: Any, **options: Any) -> None:
        only = [options["only"]] if options["only"] else None
        self.verbosity = options["verbosity"]
        try:
            settings = backfill.BackfillOptions(
                batch_size=options["batch_size"], recompute=options["recompute"], dry_run=options["dry_run"],
                workers=options["workers"], max_rows_per_second=options["max_rows_per_second"],
                pause=options["batch_pause"], stale_after=options["stale_after"],
            )
            if options["brake"] in ("pause", "cancel"):
                self._apply_brake(options["brake"], only)
                return
            if options["brake"] == "resume":
                self._apply_brake("resume", only)
        except (backfill.BackfillError, errors.SchemaError) as exc:
            raise CommandError(str(exc)) from exc
        self.bar = None
        self.last_line = 0.0
        self.last_note: str | None = None
        try:
            with sigterm_as_ctrl_c():  # kill = Ctrl-C: record the run as interrupted, then stop
                backfill.backfill_context(only=only, options=settings, reporter=self._show)
        except (backfill.BackfillError, errors.SchemaError, TokenEncodingUnavailable) as exc:
            raise CommandError(str(exc), returncode=EXIT_CODES.get(type(exc), 1)) from exc
        finally:
            self._close_bar()

    def _apply_brake(self, action: str, only: list[str] | None) -> None:
        """Pause, resume or cancel the runs of ``only``; say which."""
        who = f"{getpass.getuser()}@{socket.gethostname()}"
        backfill.ensure_schema()
        if action == "resume":
            changed = control.resume(only=only)
        else:
            changed = getattr(control, action)(only=only, by=who)
        done = control.DONE[action]
        for outcome in changed:
            then = {"pause": "its workers wait after their batch; resume with 'manage.py backfill_context --resume'",
                    "resume": "it goes on from its cursor",
                    "cancel": "its workers stop after their batch; a later run starts afresh"}[action]
            self.stdout.write(self.style.SUCCESS(f"{outcome.backfill}: run {outcome.run_id} {done} by {who}; {then}"))

    def _show(self, event: Event) -> None:
        """Show one of the backfill's events: a bar on a terminal, lines otherwise."""
        match event:
            case backfill.BackfillStarted():
                self._started(event)
            case backfill.BackfillProgress():
                self._progress(event)
            case backfill.BackfillFinished():
                self._finished(event.result)
            case backfill.BackfillSkipped():
                if event.named or self.verbosity > 1:
                    self.stdout.write(f"{event.backfill}: skipped: {event.why}")

    def _started(self, start: backfill.BackfillStarted) -> None:
        if self.verbosity:
            how = f"joining run {start.run_id}" if start.joined else f"run {start.run_id}"
            if start.resumed_from:
                how += f", resuming interrupted run {start.resumed_from}"
            workers = f"{start.workers} worker{'s' if start.workers != 1 else ''} ({start.workers_why})"
            batches = (f"batches of {start.batch_size:,} ids" if start.batch_size else
                       f"batches sized to take {start.target_seconds:g}s")
            fills = f"; fills {start.fills}" if start.fills else ""
            self.stdout.write(f"{start.backfill}: {how}, {workers}, {batches}{fills}")

    def _progress(self, progress: backfill.BackfillProgress) -> None:
        if not self.verbosity:
            return
        if self.stdout.isatty():
            if self.bar is None or not self.bar.desc.startswith(progress.backfill):
                self._close_bar()
                self.bar = tqdm(total=progress.total, desc=progress.backfill, unit="rows", file=RawOutput(self.stdout))
            if self.bar.total != progress.total:  # a new run's total is counted while it works
                self.bar.total = progress.total
            self.bar.update(progress.scanned - self.bar.n)
            self.bar.set_postfix(changed=progress.changed, refresh=False)
            self.bar.set_description(f"{progress.backfill} ({progress.note})" if progress.note else progress.backfill,
                                     refresh=False)
        elif time.monotonic() - self.last_line >= 5 or progress.note != self.last_note:  # a new note at once
            self.last_line, self.last_note = time.monotonic(), progress.note
            total = f"/{progress.total:,}" if progress.total is not None else ""
            note = f" ({progress.note})" if progress.note else ""
            self.stdout.write(f"{progress.backfill}: {progress.scanned:,}{total} rows scanned, "
                              f"{progress.changed:,} changed{note}")

    def _close_bar(self) -> None:
        if self.bar is not None:
            self.bar.close()
            self.bar = None

    def _finished(self, result: backfill.BackfillResult) -> None:
        self._close_bar()
        rate = result.scanned / result.seconds if result.seconds > 0 else 0
        if result.dry_run:
            self.stdout.write(f"{result.backfill}: dry run: {result.changed:,} of {result.scanned:,} rows "
                              "would change; nothing was written")
        elif result.scanned == 0:
            self.stdout.write(self.style.SUCCESS(f"{result.backfill}: nothing to do, every row has its values"))
        else:
            done = "complete" if result.complete else "this worker's share done; other workers still running"
            self.stdout.write(self.style.SUCCESS(
                f"{result.backfill}: {result.changed:,} of {result.scanned:,} rows changed in {result.seconds:.1f}s "
                f"({rate:,.0f} rows/s), run {result.run_id} {done}"))
            if result.changed == 0:
                self.stdout.write(f"{result.backfill}: no row needed changing")
            slowed = [f"{n:,} batch{'es' if n != 1 else ''} for {health.SLOWING_SIGNALS[signal]}"
                      for signal, n in result.slowed.items()]
            if result.held_seconds:
                slowed.append(f"held {result.held_seconds:.1f}s for replica lag "
                              f"(worst {result.worst_replica_lag:.1f}s)")
            if slowed:
                self.stdout.write(f"{result.backfill}: slowed by the database's health: {', '.join(slowed)}")
