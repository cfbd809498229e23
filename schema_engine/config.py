"""The one Alembic configuration, and the options ``migrations_alembic/env.py`` runs with.

``alembic_config()`` serves ``migrate_schema``, the plain ``alembic`` CLI (through ``alembic.ini``
and ``env.py``), the tests and the scripts. What a caller tells ``env.py`` travels as one typed
``EnvOptions`` in ``config.attributes["options"]``; the plain CLI gets the defaults for its command.
"""
from __future__ import annotations

import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TextIO

import sqlalchemy as sa
from alembic.config import Config
from django.conf import settings

from schema_engine import autogenerate
from schema_engine.progress import Reporter
from schema_engine.versioning import VERSIONS_TABLE

ALEMBIC_INI = Path(__file__).resolve().parent.parent / "alembic.ini"
# Tables that downgrades fill with the data of dropped columns and tables; not part of the models.
ARCHIVE_TABLE_PREFIX = "archive_"
# Where the engine records each applied revision's checksum (``checksums.py``); not part of the models.
CHECKSUM_TABLE = "alembic_revision_checksums"
# Commands that write to the database take the migration lock; reading ones (current, check) never wait.
WRITING_COMMANDS = frozenset({"upgrade", "downgrade", "stamp"})
OPTIONS_KEY = "options"


@dataclass(frozen=True)
class EnvOptions:
    """What ``env.py`` needs to know of the run: where, which command, and whom to tell what happened."""

    command: str = ""  # upgrade, downgrade, stamp, current, check, revision...
    # online: the caller's (an Engine, or pytest-alembic's connection wrapped to look like one);
    # else the configured database
    connection: sa.Connection | sa.Engine | Any | None = None
    # it came the cookbook way (config.attributes["connection"]): a transaction open on it is the caller's
    lent: bool = False
    url: sa.URL | None = None  # offline (--sql): the dialect to render for
    needs_metadata: bool = True  # only comparisons (check, autogenerate) need the models' metadata
    render_guards: bool = True  # offline: begin with the guard's SET lock_timeout/statement_timeout lines
    starting_revisions: tuple[str, ...] = ()  # offline: start here, not at the range's FROM (a merge's parents)
    skip_recorded_check: bool = False  # stamp --purge: alembic_version may hold anything
    skip_empty_autogenerate: bool = False  # revision --autogenerate: no file when nothing changed
    # revision --autogenerate: the renames the author named (--rename), and who is asked of the other
    # candidates (a terminal; None: nobody, a removal and an addition stay what they are)
    renames: tuple[autogenerate.Rename, ...] = ()
    confirm_rename: autogenerate.ConfirmRename | None = None
    # check, autogenerate: columns an expand not yet contracted holds in two shapes, compared after its contract
    in_flight: frozenset[tuple[str, str]] = frozenset()
    # upgrade: the caller ran commands.refuse_unsafe_upgrade for the whole upgrade and runs the deferred
    # data checks itself (migrate_schema, one revision at a time for the replicas): env.py runs the gate only
    guarded: bool = False
    # Who hears what happened (each revision started and applied, lock retries, archived rows):
    # ``progress.py``. None: the plain CLI, whose env.py logs each event.
    reporter: Reporter | None = None

    @property
    def writes(self) -> bool:
        return self.command in WRITING_COMMANDS

    @classmethod
    def of(cls, config: Config) -> "EnvOptions":
        """Return the options a caller put in ``config``; for the plain CLI, those of its command."""
        given = config.attributes.get(OPTIONS_KEY)
        if isinstance(given, EnvOptions):
            return given
        # The alembic CLI: its parser stores (command function, positional, keyword names) as ``cmd``.
        command_function, _, _ = getattr(config.cmd_opts, "cmd", (None, None, None))
        return cls(command=getattr(command_function, "__name__", ""),
                   # pytest-alembic passes its connection (or engine) this way.
                   connection=config.attributes.get("connection"),
                   lent=config.attributes.get("connection") is not None,
                   skip_recorded_check=bool(getattr(config.cmd_opts, "purge", False)),
                   skip_empty_autogenerate=bool(getattr(config.cmd_opts, "autogenerate", False)))


def alembic_config(*, stdout: TextIO | None = None, options: EnvOptions | None = None) -> Config:
    """Return the Alembic config of this project, carrying ``options`` to ``env.py``."""
    stream = stdout or sys.stdout
    # Listings go to ``stdout``, offline SQL to ``output_buffer``: both to the caller's stream.
    config = Config(str(ALEMBIC_INI), stdout=stream, output_buffer=stream)
    if getattr(settings, "ALEMBIC_SCRIPT_LOCATION", ""):
        config.set_main_option("script_location", settings.ALEMBIC_SCRIPT_LOCATION)
    if options is not None:
        config.attributes[OPTIONS_KEY] = options
    return config


def include_object(obj: Any, name: str | None, type_: str, reflected: bool, compare_to: Any, *,
                   leave_out: frozenset[tuple[str, str]] = frozenset()) -> bool:
    """Leave archive tables (data kept by downgrades), the checksums and the expands' bookkeeping out of comparisons,
    and the columns in ``leave_out`` ((table, column): those an expand holds in two shapes until its contract)."""
    if type_ == "column" and (obj.table.name, name) in leave_out:
        return False
    return not (type_ == "table" and reflected and name
                and (name.startswith(ARCHIVE_TABLE_PREFIX) or name in (CHECKSUM_TABLE, VERSIONS_TABLE)))


def process_revision_directives(context: Any, revision: Any, directives: list[Any]) -> None:
    """``revision --autogenerate``: no file when nothing changed;
    else revisions ``plan`` accepts (``autogenerate.py``)."""
    options = EnvOptions.of(context.config)
    if options.skip_empty_autogenerate and directives and directives[0].upgrade_ops.is_empty():
        directives[:] = []
    if options.command == "revision":  # not check: it compares, and writes nothing
        autogenerate.deployable(context, revision, directives, renames=options.renames,
                                confirm_rename=options.confirm_rename)
