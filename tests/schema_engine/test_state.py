"""``schema_engine.state``: reading the revision history, and a revision file that cannot be read named in one line."""
from __future__ import annotations

import sys
from pathlib import Path

import pytest

from schema_engine import commands, errors, state
from tests.conftest import REVISIONS, django_url, error_lines, run_cli

BROKEN_FILES = {
    # what an unescaped `revision -m 'say """hi"""'` wrote
    "syntax": ('"""say """hi"""\n\nRevision ID: 007_broken\n"""\n', 1, "SyntaxError"),
    "name": ('"""A revision that uses what it does not import."""\nrevision = "007_broken"\n'
             'down_revision = sa.text("x")\n', 3, "NameError: name 'sa' is not defined"),
    "import": ('"""A revision that imports a module that is not there."""\nimport not_a_module_anywhere\n', 2,
               "ModuleNotFoundError: No module named 'not_a_module_anywhere'"),
}


def _add_broken(scratch_migrations: Path, kind: str) -> tuple[str, int, str]:
    text, line, error = BROKEN_FILES[kind]
    (scratch_migrations / "versions" / "007_broken.py").write_text(text)
    return "007_broken.py", line, error


@pytest.mark.parametrize("kind", sorted(BROKEN_FILES))
def test_a_revision_file_that_cannot_be_imported_is_named_with_the_python_error(scratch_migrations: Path,
                                                                                 kind: str) -> None:
    name, line, error = _add_broken(scratch_migrations, kind)
    with pytest.raises(errors.BrokenRevisionFile, match=rf"{name}:{line}: {error}.*fix the file") as caught:
        state.script_directory()
    assert caught.value.path.endswith(name) and caught.value.line == line
    assert len(str(caught.value).splitlines()) == 1
    with pytest.raises(errors.BrokenRevisionFile, match=rf"{name}:{line}: "):
        commands.history()  # through Alembic's own command, which reads the files itself


def test_a_revision_that_imports_a_broken_module_names_both(scratch_migrations: Path) -> None:
    helper = scratch_migrations / "data_migrations" / "broken_helper.py"
    helper.write_text("def broken(:\n")
    (scratch_migrations / "versions" / "007_uses_helper.py").write_text(
        '"""Uses a helper."""\nimport importlib.util\n\n'
        f"spec = importlib.util.spec_from_file_location('helper', {str(helper)!r})\n"
        "spec.loader.exec_module(importlib.util.module_from_spec(spec))\n")
    with pytest.raises(errors.BrokenRevisionFile,
                       match=r"007_uses_helper.py:5: imports .*broken_helper.py:1: SyntaxError: invalid syntax"):
        state.script_directory()


def test_a_failing_revision_is_not_taken_for_a_file_that_cannot_be_imported(make_database,
                                                                             scratch_migrations: Path) -> None:
    """A revision's upgrade() runs inside env.py's import: its error is the revision's failure, not a broken file."""
    (scratch_migrations / "versions" / "007_fails.py").write_text(
        f'"""Fails."""\nrevision = "007_fails"\ndown_revision = "{REVISIONS[-1]}"\nbranch_labels = None\n'
        "depends_on = None\n\n\ndef upgrade() -> None:\n    raise ValueError('the upgrade fails')\n\n\n"
        "def downgrade() -> None:\n    pass\n")
    url = make_database("sqlite")
    with pytest.raises(ValueError, match="the upgrade fails"):
        commands.upgrade(revision="head", url=url)


@pytest.mark.parametrize("args", [["history"], ["heads"], ["current"], ["upgrade"], ["show", "head"],
                                  ["revision", "-m", "next"]], ids=lambda a: "-".join(a[:1]))
def test_every_command_says_which_revision_file_is_broken_in_one_line(make_database, scratch_migrations: Path,
                                                                      args: list[str]) -> None:
    name, line, _ = _add_broken(scratch_migrations, "syntax")
    url = make_database("sqlite")
    result = run_cli(sys.executable, "manage.py", "migrate_schema", *args, database_url=django_url(url),
                     ALEMBIC_SCRIPT_LOCATION=str(scratch_migrations))
    assert result.returncode == 1 and "Traceback" not in result.stderr
    (line_shown,) = error_lines(result.stderr)
    assert f"{name}:{line}: SyntaxError" in line_shown


@pytest.mark.parametrize("message", ['say """hi"""', 'C:\\new\\table', 'a quote at the end"',
                                     "a backslash at the end\\"])
def test_no_revision_message_can_break_the_file_it_is_written_into(scratch_migrations: Path, message: str) -> None:
    (revision,) = commands.create_revision(message=message)
    written = state.script_directory().get_revision(revision)
    assert state.summary(written) == message
