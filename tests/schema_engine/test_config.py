"""``schema_engine/config.py``: one Alembic config, and the options env.py reads as one typed object."""
from __future__ import annotations

from pathlib import Path

import sqlalchemy as sa
from alembic.config import Config

from schema_engine import config
from tests.conftest import ROOT


def test_the_config_points_at_the_projects_revisions() -> None:
    made = config.alembic_config()
    assert Path(made.get_main_option("script_location")).resolve() == ROOT / "migrations_alembic"
    assert made.get_main_option("sqlalchemy.url") is None  # the URL comes from the settings, never a file


def test_options_travel_to_env_py_as_one_object() -> None:
    options = config.EnvOptions(command="upgrade", needs_metadata=False)
    assert config.EnvOptions.of(config.alembic_config(options=options)) is options
    assert options.writes and not config.EnvOptions(command="current").writes


def test_the_plain_cli_gets_the_options_of_its_command() -> None:
    class CliOptions:  # what alembic's argument parser leaves on config.cmd_opts
        cmd = (lambda: None, [], [])
        purge = True

    CliOptions.cmd[0].__name__ = "stamp"
    cli = Config(str(config.ALEMBIC_INI), cmd_opts=CliOptions())
    options = config.EnvOptions.of(cli)
    assert (options.command, options.skip_recorded_check, options.writes) == ("stamp", True, True)


def test_a_connection_passed_the_cookbook_way_is_lent(tmp_path: Path) -> None:
    """pytest-alembic puts its engine (or wrapped connection) in config.attributes: env.py uses it,
    never commits for it."""
    engine = sa.create_engine(f"sqlite:///{tmp_path / 'lent.sqlite3'}")
    given = Config(str(config.ALEMBIC_INI), attributes={"connection": engine})
    options = config.EnvOptions.of(given)
    assert (options.connection, options.lent) == (engine, True)
    assert not config.EnvOptions.of(Config(str(config.ALEMBIC_INI))).lent
    assert not config.EnvOptions(command="upgrade").lent  # migrate_schema's own connection


def test_archive_tables_are_left_out_of_comparisons() -> None:
    assert not config.include_object(None, "archive_002_calls", "table", True, None)
    assert config.include_object(None, "calls", "table", True, None)
