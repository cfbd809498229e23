"""``manage.py migrate_schema``: the Alembic revisions, for operators and deploy scripts."""
from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Any

from django.core.management.base import BaseCommand, CommandError, CommandParser

from reautomation import backup, database, schema


PLAN_UNSAFE = 3  # `plan`'s exit code when applying now is not safe (1: an error, 2: drift)


class Command(BaseCommand):
    help = (
        "Migrate the database schema with Alembic (Django's migrations are disabled). "
        "With no subcommand: upgrade to head."
    )
    requires_system_checks: list[str] = []  # must run on a database the models do not match yet

    def add_arguments(self, parser: CommandParser) -> None:
        sub = parser.add_subparsers(dest="action", metavar="SUBCOMMAND")
        up = sub.add_parser("upgrade", help="upgrade to REV (default: head)")
        up.add_argument("revision", nargs="?", default="head")
        up.add_argument("--sql", action="store_true", help="print the SQL from the current revision instead")
        up.add_argument("--backup", metavar="DIR", type=Path, default=None,
                        help="first write a backup of the database into DIR (pg_dump) and print how to restore it")
        down = sub.add_parser("downgrade", help="downgrade to REV (-1, base, or an id)")
        down.add_argument("revision")
        down.add_argument("--sql", action="store_true", help="print the SQL instead of running it")
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
        mrg = sub.add_parser("merge", help="create a revision merging REVS (e.g. heads)")
        mrg.add_argument("revisions", nargs="+")
        mrg.add_argument("-m", "--message", default=None)
        rev = sub.add_parser("revision", help="create a new revision file")
        rev.add_argument("-m", "--message", required=True)
        rev.add_argument("--autogenerate", action="store_true", help="compare the models with the database")
        sub.add_parser("check", help="fail if the models and the database (at head) differ")
        # pg_restore --clean replaces what the backup holds and leaves other tables alone: downgrade to
        # the backup's revision (in its file name) first, as scripts/rollback does.
        rst = sub.add_parser("restore", help="replace the database's contents with a backup made by --backup "
                                             "(downgrade to its revision first)")
        rst.add_argument("backup_file", type=Path)
        rst.add_argument("--yes", action="store_true", help="confirm: everything written since the backup is lost")
        pln = sub.add_parser("plan", help="what 'upgrade head' would do and whether it is safe now (exit 0) or not (3)")
        pln.add_argument("--json", action="store_true", help="print the plan as JSON")
        for subparser in sub.choices.values():
            subparser.formatter_class = argparse.RawDescriptionHelpFormatter

    def handle(self, *args: Any, action: str | None = None, **options: Any) -> None:
        self.verbosity = options["verbosity"]
        try:
            self._dispatch(action or "upgrade", options)
        except (schema.SchemaError, database.InvalidDatabaseURL) as exc:
            raise CommandError(str(exc), returncode=2 if isinstance(exc, schema.SchemaDrift) else 1) from exc

    def _dispatch(self, action: str, options: dict[str, Any]) -> None:
        out = self.stdout._out  # Alembic writes whole lines itself; OutputWrapper would add newlines
        verbose = options.get("alembic_verbose", False)
        if action in ("upgrade", "downgrade"):
            revision = options.get("revision") or "head"
            run = schema.upgrade if action == "upgrade" else schema.downgrade
            if options.get("sql"):
                run(revision=revision, sql=True, stdout=out)
                return
            if options.get("backup"):
                where = "-".join(schema.status().current) or "base"
                saved = backup.back_up(options["backup"], label=f"at-{where}")
                self.stdout.write(f"Backup written: {saved.path}")
                self.stdout.write(f"To restore it: {saved.restore_command}")
            if self.verbosity:
                self.stdout.write(f"{action.capitalize()} {database.display_url(database.sqlalchemy_url())} to {revision}")
            applied = []
            run(revision=revision, stdout=out, on_applied=lambda step: (applied.append(step), self._report(step)),
                on_lock_retry=self._report_retry)
            status = schema.status()
            if self.verbosity:
                where = "; ".join(status.current) or "base"
                verb = "applied" if action == "upgrade" else "reverted"
                done = f"{len(applied)} revision(s) {verb}" if applied else "Nothing to do"
                self.stdout.write(self.style.SUCCESS(f"{done}; database is at {where}"))
            self._report_invalid_indexes(status)
        elif action == "current":
            schema.current(verbose=verbose, stdout=out)
            self._report_invalid_indexes(schema.status())
        elif action == "history":
            schema.history(rev_range=options["rev_range"], verbose=verbose, stdout=out)
        elif action == "heads":
            schema.heads(verbose=verbose, stdout=out)
        elif action == "show":
            schema.show(revision=options["revision"], stdout=out)
        elif action == "stamp":
            schema.stamp(revision=options["revision"], stdout=out)
            self.stdout.write(self.style.SUCCESS(f"Stamped the database as {options['revision']}"))
        elif action == "merge":
            revision = schema.merge(revisions=options["revisions"], message=options["message"], stdout=out)
            self.stdout.write(self.style.SUCCESS(f"Created merge revision {revision}"))
        elif action == "revision":
            revision = schema.create_revision(
                message=options["message"], autogenerate=options["autogenerate"], stdout=out
            )
            if revision is None:
                self.stdout.write("No changes between the models and the database; no revision written")
            else:
                self.stdout.write(self.style.SUCCESS(f"Created revision {revision}: review it before applying"))
        elif action == "restore":
            if not options["yes"]:
                raise CommandError("restore replaces the database's contents with the backup: add --yes to confirm")
            backup.restore(options["backup_file"])
            self.stdout.write(self.style.SUCCESS(f"Restored {options['backup_file']}; database is at "
                                                 f"{'; '.join(schema.status().current) or 'base'}"))
        elif action == "plan":
            self._plan(schema.plan(), as_json=options["json"])
        elif action == "check":
            schema.check(stdout=out)
            self.stdout.write(self.style.SUCCESS("The database matches the models"))

    def _plan(self, plan: schema.Plan, *, as_json: bool) -> None:
        if as_json:
            self.stdout.write(json.dumps(plan.as_dict(), indent=2))
        else:
            self.stdout.write(f"Database at {'; '.join(plan.current) or 'base'}; head {'; '.join(plan.heads)}")
            if not plan.pending:
                self.stdout.write("No revision pending")
            for rev in plan.pending:
                needs = f"  [needs backfill: {', '.join(rev.requires_backfills)}]" if rev.requires_backfills else ""
                self.stdout.write(f"  pending {rev.revision:<30} {rev.doc}{needs}")
            for problem in plan.problems:
                self.stdout.write(f"  problem: {problem}")
            if plan.safe:
                self.stdout.write(self.style.SUCCESS("Safe to apply: 'manage.py migrate_schema upgrade head'"))
        if not plan.safe:
            raise CommandError(f"not safe to apply: {plan.problems[0]}"
                               + (f" (and {len(plan.problems) - 1} more)" if len(plan.problems) > 1 else ""),
                               returncode=PLAN_UNSAFE)

    def _report_retry(self, attempt: int, pause: float, reason: str) -> None:
        self.stderr.write(f"  lock_timeout: {reason}; retry {attempt} in {pause:.1f} s")

    def _report_invalid_indexes(self, status: schema.SchemaStatus) -> None:
        for index, table in status.invalid_indexes:
            self.stderr.write(f"warning: {schema.invalid_index_problem(index, table)}")

    def _report(self, step: schema.AppliedRevision) -> None:
        if self.verbosity:
            verb = "Applied" if step.is_upgrade else "Reverted"
            self.stdout.write(f"  {verb} {step.revision:<30} {step.seconds:8.2f}s  {step.doc}")
