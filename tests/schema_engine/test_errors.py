"""``schema_engine/errors.py``: Alembic's and the database's errors, classified by their type, never their text."""
from __future__ import annotations

import pytest
import sqlalchemy as sa
from alembic.script import revision as alembic_revision
from alembic.util import CommandError

from schema_engine import commands, database, errors, state
from tests.conftest import HEAD, run_sql


def raised_through_translation(exc: BaseException) -> errors.SchemaError:
    with pytest.raises(errors.SchemaError) as caught, errors.alembic_errors():
        raise exc
    return caught.value


@pytest.mark.parametrize(("cause", "expected"), [
    (alembic_revision.MultipleHeads(["a", "b"], "head"), errors.MultipleHeads),
    (alembic_revision.ResolutionError("Can't locate revision identified by 'x'", "x"), errors.UnknownRevision),
    (alembic_revision.RangeNotAncestorError("a", "b"), errors.InvalidRevisionRange),
    (alembic_revision.RevisionError("Relative revision -1 didn't produce 1 migrations"), errors.InvalidRevisionRange),
])
def test_alembic_errors_are_classified_by_their_cause(cause: Exception, expected: type) -> None:
    # Alembic wraps them in a CommandError whose text varies by version; the cause's type decides.
    wrapped = CommandError("whatever the text says")
    wrapped.__cause__ = cause
    translated = raised_through_translation(wrapped)
    assert type(translated) is expected
    assert "\n" not in str(translated)


def test_the_same_text_without_the_type_is_not_taken_for_it() -> None:
    translated = raised_through_translation(CommandError("Multiple head revisions are present"))
    assert type(translated) is errors.SchemaError


def test_a_lost_connection_is_told_from_a_failed_revision(pg_db: sa.URL) -> None:
    with database.connect(pg_db) as conn:
        with pytest.raises(errors.RevisionFailed, match="rolled back: relation \"nope\" does not exist"), \
                errors.alembic_errors():
            conn.execute(sa.text("SELECT * FROM nope"))
    with database.connect(pg_db) as conn:
        pid = conn.execute(sa.text("SELECT pg_backend_pid()")).scalar()
        run_sql(pg_db, "SELECT pg_terminate_backend(:pid)", {"pid": pid})
        with pytest.raises(errors.DatabaseUnreachable, match="lost the database connection"), errors.alembic_errors():
            conn.execute(sa.text("SELECT 1"))


def test_every_engine_error_has_the_one_root() -> None:
    classes = [value for value in vars(errors).values()
               if isinstance(value, type) and issubclass(value, Exception) and value.__module__ == errors.__name__]
    assert len(classes) > 15 and all(issubclass(cls, errors.SchemaError) for cls in classes)
    assert issubclass(errors.InvalidDatabaseURL, errors.SchemaError)


def test_typed_errors_carry_their_data(pg_head_db: sa.URL) -> None:
    run_sql(pg_head_db, "UPDATE alembic_version SET version_num = 'f00ba4'")
    with pytest.raises(errors.UnknownRecordedRevision) as caught:
        state.status(url=pg_head_db)
    assert caught.value.revisions == ("f00ba4",)
    run_sql(pg_head_db, "UPDATE alembic_version SET version_num = :head", {"head": HEAD})
    with pytest.raises(errors.SchemaDrift) as drift:
        run_sql(pg_head_db, "ALTER TABLE calls ADD COLUMN stray integer")
        commands.check(url=pg_head_db)
    assert drift.value.diffs


def test_first_line_is_the_databases_own_message(pg_db: sa.URL) -> None:
    with database.connect(pg_db) as conn:
        try:
            conn.execute(sa.text("SELECT * FROM nope"))
        except sa.exc.DBAPIError as exc:
            assert errors.first_line(exc) == 'relation "nope" does not exist'
    assert errors.first_line(ValueError()) == "ValueError"
