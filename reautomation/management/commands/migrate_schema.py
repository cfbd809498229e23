"""``manage.py migrate_schema``: the Alembic revisions, for operators and deploy scripts.

Exit codes: 0 done; 1 an error (one line on stderr saying what to do); 2 ``check`` found drift;
3 ``plan`` found it unsafe to apply now, or ``forecast`` found a limit passed; 130 interrupted
(Ctrl-C or SIGTERM: the revision in flight is rolled back and one line says where the database is).
"""
from __future__ import annotations

import argparse
import contextlib
import json
import sys
from pathlib import Path
from typing import Any, Iterator, TextIO

from django.conf import settings
from django.core.management.base import BaseCommand, CommandError, CommandParser

from operator_kit.output import RawOutput
from operator_kit.signals import sigterm_as_ctrl_c
from schema_engine import backup, checksums, commands, contracts, database, errors, guard, progress, state
from schema_engine import forecast as deploy_forecast
from schema_engine import plan as deploy_plan
from schema_engine.autogenerate import Rename, RenameCandidate
from schema_engine.forecast import capture as forecast_capture
from schema_engine.forecast import chart as forecast_chart
from schema_engine.forecast import logical, stored, verdict
from schema_engine.forecast.result import PHYSICAL, Forecast

PLAN_UNSAFE = 3  # `plan`'s exit code when applying now is not safe (1: an error, 2: drift); `forecast`'s too
INTERRUPTED = 130  # the shell's code for a command ended by SIGINT; SIGTERM too (it takes the same path)
# Subcommands that act on the database name it (password hidden) before they act.
ACTS_ON_DATABASE = {"upgrade", "downgrade", "current", "stamp", "check", "plan", "restore", "verify", "forecast",
                    "capture"}
# Progress events shown only from this verbosity on; the others always (archived rows, rehearsals).
SHOWN_FROM_VERBOSITY: dict[type[progress.Event], int] = {
    commands.RevisionStarted: 2, commands.RevisionApplied: 1, commands.WaitingForReplicas: 1}
# What happens while a revision runs is indented under the revision's line.
WITHIN_A_REVISION = (commands.ArchiveNote, commands.WaitingForReplicas)


class Command(BaseCommand):
    help = (
        "Migrate the database schema with Alembic (Django's migrations are disabled). "
        "With no subcommand: upgrade to head."
    )
    requires_system_checks: list[str] = []  # must run on a database the models do not match yet
    _held: list[progress.Event] | None = None  # what a revision reported while it ran (_report)

    def add_arguments(self, parser: CommandParser) -> None:
        sub = parser.add_subparsers(dest="action", metavar="SUBCOMMAND")
        up = sub.add_parser("upgrade", help="upgrade to REV (default: head)")
        up.add_argument("revision", nargs="?", default="head")
        up.add_argument("--sql", action="store_true", help="print the SQL from the current revision instead")
        up.add_argument("--backup", metavar="DIR", type=Path, default=None, dest="backup_dir",
                        help="first write a backup of the database into DIR (pg_dump) and print how to restore it")
        up.add_argument("--defer-contracts", action="store_true",
                        help="stop before a contract that must wait (its fill, the release before it) and say so, "
                             "instead of refusing (scripts/deploy)")
        down = sub.add_parser("downgrade", help="downgrade to REV (-1, base, or an id)")
        down.add_argument("revision")
        down.add_argument("--sql", action="store_true", help="print the SQL instead of running it")
        down.add_argument("--check", action="store_true",
                          help="only say where the downgrade would leave the database; change nothing")
        cur = sub.add_parser("current", help="show the database's revision")
        cur.add_argument("--verbose", "-v", action="store_true", dest="alembic_verbose")
        hist = sub.add_parser("history", help="list revisions, newest first")
        hist.add_argument("--verbose", "-v", action="store_true", dest="alembic_verbose")
        hist.add_argument("--rev-range", "-r", default=None)
        hds = sub.add_parser("heads", help="show the head revision(s)")
        hds.add_argument("--verbose", "-v", action="store_true", dest="alembic_verbose")
        shw = sub.add_parser("show", help="show one revision")
        shw.add_argument("revision")
        stp = sub.add_parser("stamp", help="record REV as current without running revisions")
        stp.add_argument("revision")
        stp.add_argument("--purge", action="store_true",
                         help="first empty alembic_version (when it records an unknown revision, or several)")
        mrg = sub.add_parser("merge", help="create a revision merging REVS (e.g. heads)")
        mrg.add_argument("revisions", nargs="+")
        mrg.add_argument("-m", "--message", default=None)
        rev = sub.add_parser("revision", help="create a new revision file")
        rev.add_argument("-m", "--message", required=True)
        rev.add_argument("--autogenerate", action="store_true", help="compare the models with the database")
        rev.add_argument("--rename", action="append", default=[], metavar="TABLE.OLD=NEW", dest="renames",
                         help="with --autogenerate: column OLD of TABLE is the one the models now call NEW (its data "
                              "kept), not a removal and an addition; repeatable. Without it a terminal is asked")
        rev.add_argument("--noinput", "--no-input", action="store_false", dest="interactive",
                         help="ask nothing, even on a terminal: only --rename makes a rename")
        sub.add_parser("check", help="fail if the models and the database (at head) differ")
        rst = sub.add_parser("restore", help="replace the whole database with a backup (made by --backup, or a "
                                             "plain pg_dump .sql file), in one transaction")
        rst.add_argument("backup_file", type=Path)
        rst.add_argument("--yes", action="store_true", help="confirm: everything written since the backup is lost")
        pln = sub.add_parser("plan", help="what 'upgrade head' would do and whether it is safe now (exit 0) or not (3)")
        pln.add_argument("--json", action="store_true", dest="as_json", help="print the plan as JSON")
        pln.add_argument("--defer-contracts", action="store_true",
                         help="plan 'upgrade head --defer-contracts': a contract that must wait is a warning")
        pln.add_argument("--rehearse", action="store_true",
                         help="also apply the pending revisions to a copy of the schema (no data) in a scratch "
                              "database, and report each one's outcome and duration")
        fct = sub.add_parser("forecast", help="apply the pending revisions to a copy of the database with its data, "
                                              "under replayed traffic, and measure what the application would feel; "
                                              "exit 3 when a FORECAST_MAX_* limit is passed (docs/forecast.md)")
        fct.add_argument("--capture", metavar="FILE", type=Path, default=None,
                         help="replay this capture of the primary's statements (docs/forecast.md); default: the bench "
                              "writers' workload")
        fct.add_argument("--json", action="store_true", dest="as_json", help="print the forecast and problems as JSON")
        fct.add_argument("--chart", metavar="PATH", type=Path, default=None,
                         help="also write the latency chart (SVG, 0600) to PATH")
        fct.add_argument("--sample-batches", type=int, default=20, metavar="N",
                         help="forecast each declared backfill from N batches (default 20)")
        fct.add_argument("--replica", action=argparse.BooleanOptionalAction, default=None,
                         help="start a replica following the copy and forecast the replica lag (the copy's size "
                              "again on disk); default: when the primary streams to replicas")
        fct.add_argument("--tables", metavar="T1,T2", default=None,
                         help="copy only these tables' newest rows (--rows), the rows they reference, and the schema, "
                              "not the whole primary: a logical copy (docs/forecast.md)")
        fct.add_argument("--rows", type=int, default=None, metavar="N",
                         help=f"with --tables: at most N rows of each (default {logical.DEFAULT_ROW_LIMIT})")
        cpt = sub.add_parser("capture", help="record the primary's statements for SECONDS (its statement logging "
                                             "switched on, then back as it was) into FILE, for forecast --capture")
        cpt.add_argument("output", metavar="FILE", type=Path, help="the capture file to write (new; 0600)")
        cpt.add_argument("--seconds", type=float, default=None, help="how long to record")
        cpt.add_argument("--from-log", metavar="LOG", type=Path, default=None, dest="from_log",
                         help="instead, take the statements from this server log you already have")
        vrf = sub.add_parser("verify", help="check that no applied revision's file has changed since it was applied")
        vrf.add_argument("--accept", nargs="+", metavar="REV", default=None,
                         help="record the current checksum of these applied revisions: their change is deliberate")
        for subparser in sub.choices.values():
            subparser.formatter_class = argparse.RawDescriptionHelpFormatter

    def handle(self, *args: Any, action: str | None = None, **options: Any) -> None:
        self.verbosity = options["verbosity"]
        action = action or "upgrade"
        try:
            with sigterm_as_ctrl_c():  # timeout, a CI cancel: roll back and say so, as for Ctrl-C
                if action in ACTS_ON_DATABASE:
                    self._name_database(quiet_stdout=options.get("sql") or options.get("as_json"))
                getattr(self, f"_{action}")(**options)
        except errors.Interrupted as exc:
            raise CommandError(str(exc), returncode=INTERRUPTED) from exc
        except KeyboardInterrupt as exc:
            raise CommandError("interrupted; nothing was changed", returncode=INTERRUPTED) from exc
        except errors.SchemaError as exc:
            raise CommandError(str(exc), returncode=2 if isinstance(exc, errors.SchemaDrift) else 1) from exc

    def _name_database(self, *, quiet_stdout: bool) -> None:
        """Say which database this acts on; on stderr when stdout carries SQL or JSON."""
        if self.verbosity:
            line = f"Database: {database.display_url(database.resolve_url())}"
            (self.stderr if quiet_stdout else self.stdout).write(line)

    @property
    def _alembic_out(self) -> TextIO:
        return RawOutput(self.stdout)  # type: ignore[return-value]

    def _upgrade(self, *, revision: str = "head", sql: bool = False, backup_dir: Path | None = None,
                 defer_contracts: bool = False, **_: Any) -> None:
        if sql:
            commands.write_sql("upgrade", revision=revision, stdout=self._alembic_out)
            return
        if backup_dir:
            saved = backup.back_up_before_migrating(backup_dir)
            self.stdout.write(f"Backup written: {saved.path}")
            self.stdout.write(f"To restore it: {saved.restore_command}")
        self._move("upgrade", contracts.upgrade_deferring_contracts if defer_contracts else commands.upgrade, revision)

    def _downgrade(self, *, revision: str, sql: bool = False, check: bool = False, **_: Any) -> None:
        if sql:
            commands.write_sql("downgrade", revision=revision, stdout=self._alembic_out)
        elif check:
            target = commands.downgrade_target(revision)
            self.stdout.write(f"downgrade {revision} would leave the database at {target}")
        else:
            self._move("downgrade", commands.downgrade, revision)

    def _move(self, action: str, run: Any, revision: str) -> None:
        result = run(revision=revision, stdout=self._alembic_out, reporter=self._report)
        if self.verbosity:
            where = "; ".join(result.current) or "base"
            verb = "applied" if action == "upgrade" else "reverted"
            done = f"{len(result.applied)} revision(s) {verb}" if result.applied else "Nothing to do"
            self.stdout.write(self.style.SUCCESS(f"{done}; database is at {where}"))
        self._report_invalid_indexes(result.invalid_indexes)

    def _current(self, *, alembic_verbose: bool = False, **_: Any) -> None:
        commands.current(verbose=alembic_verbose, stdout=self._alembic_out)
        status = state.status()
        if len(status.heads) > 1:
            self.stderr.write(f"warning: the revision history has {len(status.heads)} heads "
                              f"({', '.join(status.heads)}); merge them with 'manage.py migrate_schema merge heads'")
        self._report_invalid_indexes(status.invalid_indexes)

    def _history(self, *, rev_range: str | None = None, alembic_verbose: bool = False, **_: Any) -> None:
        commands.history(rev_range=rev_range, verbose=alembic_verbose, stdout=self._alembic_out)

    def _heads(self, *, alembic_verbose: bool = False, **_: Any) -> None:
        commands.heads(verbose=alembic_verbose, stdout=self._alembic_out)

    def _show(self, *, revision: str, **_: Any) -> None:
        commands.show(revision=revision, stdout=self._alembic_out)

    def _stamp(self, *, revision: str, purge: bool = False, **_: Any) -> None:
        recorded = "; ".join(commands.stamp(revision=revision, purge=purge, stdout=self._alembic_out)) or "base"
        self.stdout.write(self.style.SUCCESS(f"Stamped the database as {recorded}"
                                             + (" (alembic_version emptied first)" if purge else "")))

    def _merge(self, *, revisions: list[str], message: str | None = None, **_: Any) -> None:
        revision = commands.merge(revisions=revisions, message=message, stdout=self._alembic_out)
        self.stdout.write(self.style.SUCCESS(f"Created merge revision {revision}"))

    def _revision(self, *, message: str, autogenerate: bool = False, renames: list[str] | None = None,
                  interactive: bool = True, **_: Any) -> None:
        if autogenerate:
            self._name_database(quiet_stdout=False)
        unasked: list[RenameCandidate] = []

        def not_asked(candidate: RenameCandidate) -> bool:
            unasked.append(candidate)
            return False  # never guessed: asked on a terminal, or named by --rename

        asking = autogenerate and interactive and sys.stdin.isatty()
        written = commands.create_revision(message=message, autogenerate=autogenerate, stdout=self._alembic_out,
                                           renames=[Rename.parse(text) for text in renames or ()],
                                           confirm_rename=self._ask_rename if asking else not_asked)
        if not written:
            self.stdout.write("No changes between the models and the database; no revision written")
        for revision in written:
            self.stdout.write(self.style.SUCCESS(f"Created revision {revision}: review it before applying"))
        for candidate in unasked:
            self.stderr.write(f"warning: {candidate.table}.{candidate.old} is removed and {candidate.table}."
                              f"{candidate.new} added, alike but for the name: not taken for a rename (not asked: no "
                              "terminal, or --noinput); if it is one, delete the revisions written and run again with "
                              f"--rename {candidate.rename}")

    def _ask_rename(self, candidate: RenameCandidate) -> bool:
        """Ask the terminal whether ``candidate`` is a rename, as ``makemigrations`` does; no answer is no."""
        while True:
            self.stdout.write(f"{candidate.question} ", ending="")
            self.stdout.flush()
            try:
                answer = input().strip().lower()
            except EOFError:
                self.stdout.write("")
                return False
            if answer in ("", "n", "no"):
                return False
            if answer in ("y", "yes"):
                return True
            self.stdout.write("Please answer y or n.")

    def _restore(self, *, backup_file: Path, yes: bool = False, **_: Any) -> None:
        if not yes:
            raise CommandError("restore replaces the whole database with the backup: add --yes to confirm")
        recorded = backup.restore(backup_file)
        self.stdout.write(self.style.SUCCESS(f"Restored {backup_file}; database is at {'; '.join(recorded)}"))

    def _plan(self, *, as_json: bool = False, rehearse: bool = False, defer_contracts: bool = False, **_: Any) -> None:
        if rehearse and not as_json:
            self.stdout.write("Rehearsal: the pending revisions on a copy of the schema (no data), dropped afterwards")
        reporter = progress.ignore if as_json else self._report
        self._print_plan(deploy_plan.plan(rehearse=rehearse, reporter=reporter, defer_contracts=defer_contracts),
                         as_json=as_json, defer_contracts=defer_contracts)

    def _forecast(self, *, capture: Path | None = None, as_json: bool = False, chart: Path | None = None,
                  sample_batches: int = 20, tables: str | None = None, rows: int | None = None,
                  replica: bool | None = None, **_: Any) -> None:
        if sample_batches < 1:
            raise CommandError(f"--sample-batches must be 1 or more (got {sample_batches})")
        names = [name.strip() for name in (tables or "").split(",") if name.strip()]
        if rows is not None and tables is None:
            raise CommandError("--rows goes with --tables: name the tables to copy N rows of (without --tables the "
                               "whole primary is copied)")
        if tables is not None and not names:
            raise CommandError("--tables needs the tables to copy, comma-separated (e.g. --tables calls,contacts)")
        if rows is not None and rows < 1:
            raise CommandError(f"--rows must be 1 or more (got {rows})")
        measured = deploy_forecast.forecast(capture=capture, sample_batches=sample_batches, tables=names,
                                            row_limit=rows, replica=replica,
                                            reporter=progress.ignore if as_json else self._report)
        self.show_forecast(measured, as_json=as_json, chart=chart, last_file=settings.FORECAST_LAST_FILE,
                           limits=verdict.Limits.from_settings())

    def _capture(self, *, output: Path, seconds: float | None = None, from_log: Path | None = None,
                 **_: Any) -> None:
        if from_log is not None:
            made = forecast_capture.from_log(from_log, output)
        elif seconds is None:
            raise CommandError("capture needs --seconds N (how long to record), or --from-log LOG")
        else:
            made = forecast_capture.capture(output, seconds=seconds, reporter=self._report)
        self.stdout.write(self.style.SUCCESS(f"Captured {made.describe()}"))

    def show_forecast(self, forecast: Forecast, *, as_json: bool, chart: Path | None, last_file: Path | None,
                      limits: verdict.Limits) -> None:
        """Print ``forecast`` (a table per revision, or JSON), write its chart, keep it as the last one.

        Exit 3 (CommandError) when it passes a limit, after all that: the refused forecast is kept and shown too.
        """
        problems = verdict.problems(forecast, limits)
        if as_json:
            self.stdout.write(json.dumps(stored.as_dict(forecast, problems=problems, limits=limits.as_dict()),
                                         indent=2))
        else:
            for line in forecast_lines(forecast):
                self.stdout.write(line)
            for problem in problems:
                self.stdout.write(f"  problem: {problem}")
        written = []
        if chart is not None:
            with _writing(chart, "--chart PATH"):
                written.append(f"Chart written: {forecast_chart.write_chart(forecast, chart)}")
        if last_file is not None:
            with _writing(last_file, "FORECAST_LAST_FILE"):
                saved = stored.save(last_file, forecast, problems=problems, limits=limits.as_dict())
                written.append(f"Kept as the last forecast (the admin's schema page shows it): {saved}")
        for line in written:
            (self.stderr if as_json else self.stdout).write(line)
        if problems:
            raise CommandError(f"forecast passes a limit: {problems[0]}"
                               + (f" (and {len(problems) - 1} more)" if len(problems) > 1 else ""),
                               returncode=PLAN_UNSAFE)
        if as_json:
            return
        if forecast.copy == PHYSICAL:
            self.stdout.write(self.style.SUCCESS("Within every limit (FORECAST_MAX_*): safe to deploy as forecast"))
        else:  # its durations are those of the rows copied (docs/forecast.md)
            self.stdout.write(self.style.WARNING(
                f"Within every limit (FORECAST_MAX_*) on a copy of chosen tables ({forecast.copy}): not yet a pass: "
                "scale each duration by the table's rows on the primary over its rows copied (docs/forecast.md)"))

    def _verify(self, *, accept: list[str] | None = None, **_: Any) -> None:
        if accept:
            for found in checksums.accept(accept):
                was = (f"was {(found.recorded or 'none')[:12]}; {' and '.join(found.changed_parts) or 'nothing'} "
                       "changed" if found.changed or found.recorded is None else "unchanged")
                self.stdout.write(self.style.SUCCESS(f"Accepted {found.revision}: checksum {found.current[:12]} "
                                                     f"recorded ({was})"))
            return
        found = checksums.verify()
        for rev in found:
            self.stdout.write(f"  {rev.revision:<30} {rev.current[:12]}  {rev.state}")
        changed = [rev for rev in found if rev.changed]
        if changed:
            raise CommandError(checksums.changed_message([rev.revision for rev in changed]))
        self.stdout.write(self.style.SUCCESS(f"{len(found)} applied revision(s): none changed since applied"))

    def _check(self, **_: Any) -> None:
        commands.check(stdout=self._alembic_out)
        self.stdout.write(self.style.SUCCESS("The database matches the models"))

    def _print_plan(self, plan: deploy_plan.Plan, *, as_json: bool, defer_contracts: bool = False) -> None:
        if as_json:
            self.stdout.write(json.dumps(plan.as_dict(), indent=2))
        else:
            self.stdout.write(f"Database at {'; '.join(plan.current) or 'base'}; head {'; '.join(plan.heads)}")
            if not plan.pending:
                self.stdout.write("No revision pending")
            for rev in plan.pending:
                needs = f"  [needs backfill: {', '.join(rev.requires_backfills)}]" if rev.requires_backfills else ""
                self.stdout.write(f"  pending {rev.revision:<30} {rev.doc}{needs}")
                for rule, why in rev.accepted_findings:
                    self.stdout.write(f"    accepted squawk finding {rule}: {why}")
                for check in rev.data_checks:
                    said = {"passed": "passed", "failed": f"FAILED: {check.describe_rows()}",
                            "deferred": check.deferred}[check.status]
                    self.stdout.write(f"    data check \"{check.check.name}\": {said}")
            if plan.rehearsal is not None and not plan.rehearsal.problems:
                self.stdout.write(f"  rehearsal: {len(plan.rehearsal.revisions)} revision(s) applied to the copy in "
                                  f"{plan.rehearsal.seconds:.1f}s; then no drift from the models")
            for replica in plan.replicas:
                self.stdout.write(f"  replica {replica}")
            for warning in plan.warnings:
                self.stdout.write(f"  warning: {warning}")
            for problem in plan.problems:
                self.stdout.write(f"  problem: {problem}")
            if plan.safe:
                upgrade = "upgrade head --defer-contracts" if defer_contracts else "upgrade head"
                self.stdout.write(self.style.SUCCESS(f"Safe to apply: 'manage.py migrate_schema {upgrade}'"))
        if not plan.safe:
            raise CommandError(f"not safe to apply: {plan.problems[0]}"
                               + (f" (and {len(plan.problems) - 1} more)" if len(plan.problems) > 1 else ""),
                               returncode=PLAN_UNSAFE)

    def _report(self, event: progress.Event) -> None:
        """Show one event of the engine's progress: its line (as the plain CLI logs it), under its revision."""
        if isinstance(event, guard.LockRetry):  # a warning: on stderr, whatever the verbosity
            self.stderr.write(f"  {event.describe()}")
            return
        if isinstance(event, commands.RevisionStarted):
            self._held = []
        elif isinstance(event, commands.ArchiveNote) and self._held is not None:
            # Said under its revision's line once that applies: rolled back with it (a retry), it never happened.
            self._held.append(event)
            return
        self._print_event(event)
        if isinstance(event, commands.RevisionApplied):
            for held in self._held or ():
                self._print_event(held)
            self._held = None

    def _print_event(self, event: progress.Event) -> None:
        if self.verbosity >= SHOWN_FROM_VERBOSITY.get(type(event), 0):
            indent = "    " if isinstance(event, WITHIN_A_REVISION) else "  "
            self.stdout.write(f"{indent}{event.describe()}")

    def _report_invalid_indexes(self, invalid_indexes: tuple[tuple[str, str], ...]) -> None:
        for index, table in invalid_indexes:
            self.stderr.write(f"warning: {state.invalid_index_problem(index, table)}")



@contextlib.contextmanager
def _writing(path: Path, setting: str) -> Iterator[None]:
    """Turn a file that cannot be written into one line naming it and what sets it."""
    try:
        yield
    except OSError as exc:
        raise CommandError(f"cannot write {path}: {exc.strerror}; choose a folder this user may write "
                           f"({setting})") from exc


def forecast_lines(forecast: Forecast) -> list[str]:
    """The forecast for a person: what was copied and replayed, a table per revision, each backfill's projection."""
    copy = "" if forecast.copy == PHYSICAL else f"{forecast.copy}; "  # a physical copy is the one said without words
    lines = [f"Forecast on a copy of {forecast.database} ({copy}{verdict.size_text(forecast.copy_bytes)}, made in "
             f"{forecast.copy_seconds:.1f}s); traffic: {forecast.workload}; {len(forecast.samples):,} statements timed"]
    if forecast.traffic_failed:
        lines.append(f"  {forecast.traffic_failed:,} of the traffic's statements failed on the copy"
                     + (f" (the first: {forecast.traffic_errors[0]})" if forecast.traffic_errors else ""))
    if not forecast.revisions:
        lines.append("No revision pending")
    for rev in forecast.revisions:
        locks = "; ".join(f"{lock.mode} on {lock.relation} {lock.seconds:.1f}s" for lock in rev.locks) or "none seen"
        before = ("not measured (no statement before it)" if rev.p50_before is None or rev.p99_before is None
                  else f"p50 {rev.p50_before * 1000:.1f} ms, p99 {rev.p99_before * 1000:.1f} ms")
        size = verdict.size_text(rev.size_change)
        rows = [("duration", f"{rev.seconds:.1f}s (from {rev.started:.1f}s into the replay)"),
                ("locks held", locks),
                ("statements waiting", f"{rev.waiting_statements:,}"),
                ("longest wait", f"{rev.longest_wait:.3f}s"),
                ("latency before", before),
                ("WAL written", verdict.size_text(rev.wal_bytes)),
                ("tables rewritten", ", ".join(rev.rewritten) or "none"),
                ("size change", size if rev.size_change < 0 else f"+{size}"),
                ("replica lag", "no replica followed the copy" if rev.replica_lag is None
                 else f"{rev.replica_lag:.1f}s")]
        lines.append(f"  revision {rev.revision}: {rev.doc}")
        if rev.error:
            lines.append(f"    FAILED on the copy: {rev.error}")
        lines += [f"    {name:<19} {value}" for name, value in rows]
    for fill in forecast.backfills:
        rate = fill.rows / fill.seconds if fill.seconds > 0 else 0.0
        lines.append(f"  backfill {fill.name}: {fill.batches} batch(es), {fill.rows:,} rows in {fill.seconds:.1f}s "
                     f"({rate:,.0f} rows/s); {fill.rows_pending:,} rows pending: about "
                     f"{_duration_text(fill.projected_seconds)} in all")
    return lines


def _duration_text(seconds: float) -> str:
    return f"{seconds:.0f}s" if seconds < 120 else f"{seconds / 60:.1f} min" if seconds < 7200 else \
        f"{seconds / 3600:.1f} h"
