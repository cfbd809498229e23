"""``calls/backfill/control.py``: the operator's brake, tried as an operator would, with runs in other processes."""
from __future__ import annotations

import subprocess
from typing import Iterator

import pytest
import sqlalchemy as sa
from django.contrib.admin.models import LogEntry
from django.contrib.auth.models import Permission, User
from django.test import Client
from django.urls import reverse

from calls import backfill
from calls.backfill import control
from calls.models import BackfillRun
from schema_engine import database
from tests.conftest import call, run_sql, start_manage, wait_for

pytestmark = [pytest.mark.postgres, pytest.mark.sample_calls(60)]
BATCH = 10


def scanned(url: sa.URL) -> int:
    return run_sql(url, "SELECT coalesce(max(rows_scanned), 0) FROM backfill_runs")[0][0]


def run_row(url: sa.URL) -> sa.Row:
    return run_sql(url, "SELECT id, status, paused_by, paused_at, cancelled_by, cursor, resumed_from_id, rows_scanned "
                        "FROM backfill_runs ORDER BY id DESC LIMIT 1")[0]


def start_paced(url: sa.URL, *args: str) -> subprocess.Popen[str]:
    """A messages backfill slow enough to be caught in the middle (a batch of 10 every 50 ms)."""
    return start_manage(url, "backfill_context", "--only", "messages", "--batch-size", str(BATCH),
                        "--batch-pause", "0.05", *args, PYTHONUNBUFFERED="1")


def read_until(process: subprocess.Popen[str], text: str) -> list[str]:
    """Read the process's output lines until one holds ``text`` (a state, not a time)."""
    seen = []
    for line in process.stdout:  # type: ignore[union-attr]
        seen.append(line)
        if text in line:
            return seen
    raise AssertionError(f"{text!r} never came; output:\n{''.join(seen)}")


@pytest.mark.parametrize("workers", ["1", "2"])
def test_pause_then_resume_from_the_command_line(seeded: sa.URL, workers: str) -> None:
    total = run_sql(seeded, "SELECT count(*) FROM conversation_history")[0][0]
    working = start_paced(seeded, "--workers", workers)
    try:
        wait_for(lambda: scanned(seeded) >= 5 * BATCH)
        paused = call(seeded, "backfill_context", "--pause", "--only", "messages")
        assert paused.returncode == 0, paused.stderr
        assert "messages: run 1 paused by " in paused.stdout and "--resume" in paused.stdout
        at_pause = scanned(seeded)
        read_until(working, "paused by")  # the progress line says why nothing moves
        row = run_row(seeded)
        assert row.status == "paused" and row.paused_by and row.paused_at is not None
        # Every worker stopped within one batch of the pause, and waits.
        assert scanned(seeded) - at_pause <= BATCH * int(workers)
        assert working.poll() is None

        resumed = call(seeded, "backfill_context", "--resume", "--only", "messages")
        assert resumed.returncode == 0, resumed.stderr
        assert "messages: run 1 resumed" in resumed.stdout
        out, err = working.communicate(timeout=300)
    finally:
        if working.poll() is None:
            working.kill()
    assert working.returncode == 0, err
    assert run_sql(seeded, "SELECT status, rows_scanned FROM backfill_runs") == [("succeeded", total)]  # no row twice
    assert run_sql(seeded, "SELECT count(*) FROM conversation_history WHERE token_count IS NULL")[0][0] == 0


def test_running_the_command_again_resumes_a_paused_run(seeded: sa.URL) -> None:
    working = start_paced(seeded)
    wait_for(lambda: scanned(seeded) >= 3 * BATCH)
    control.pause(by="ops", only=["messages"], url=seeded)
    working.kill()  # its workers gone: the run stays paused, its cursor kept
    working.wait()
    cursor = run_row(seeded).cursor
    again = call(seeded, "backfill_context", "--only", "messages")
    assert again.returncode == 0, again.stderr
    row = run_row(seeded)
    assert (row.id, row.status, row.resumed_from_id) == (1, "succeeded", None) and row.cursor > cursor


def test_cancel_stops_the_run_and_a_later_run_starts_afresh(seeded: sa.URL) -> None:
    working = start_paced(seeded, "--workers", "2")
    try:
        wait_for(lambda: scanned(seeded) >= 5 * BATCH)
        cancelled = call(seeded, "backfill_context", "--cancel")
        assert cancelled.returncode == 0, cancelled.stderr
        out, err = working.communicate(timeout=300)
    finally:
        if working.poll() is None:
            working.kill()
    assert working.returncode == 3, out + err
    assert err.strip().splitlines()[-1].startswith("CommandError: backfill 'messages' was cancelled by ")
    row = run_row(seeded)
    assert row.status == "cancelled" and row.cancelled_by
    left = run_sql(seeded, "SELECT count(*) FROM conversation_history WHERE token_count IS NULL")[0][0]
    assert left > 0

    later = call(seeded, "backfill_context", "--only", "messages")
    assert later.returncode == 0, later.stderr
    row = run_row(seeded)
    # afresh: only what needs it
    assert (row.status, row.resumed_from_id, row.rows_scanned) == ("succeeded", None, left)
    assert run_sql(seeded, "SELECT count(*) FROM backfill_batches")[0][0] == 0  # none of the cancelled run's left


@pytest.mark.parametrize("args", [["--pause"], ["--resume"], ["--cancel"], ["--cancel", "--only", "calls"]])
def test_a_brake_with_nothing_to_act_on_is_one_line(pg_head_db: sa.URL, args: list[str]) -> None:
    result = call(pg_head_db, "backfill_context", *args)
    assert result.returncode != 0
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and "Traceback" not in result.stderr, lines


# --- the same brake in the admin ------------------------------------------------------------------

@pytest.fixture
def running_run(django_db_setup: None, django_db_blocker) -> Iterator[BackfillRun]:
    """A run in the admin's database as a working backfill leaves it: running, with a fresh heartbeat."""
    url = database.sqlalchemy_url()
    run_sql(url, "INSERT INTO backfill_runs (backfill, status, rows_scanned) VALUES ('messages', 'running', 120)")
    yield BackfillRun.objects.get()
    run_sql(url, "TRUNCATE backfill_runs CASCADE")


@pytest.fixture
def brake_user(django_db_setup: None) -> Iterator[Client]:
    user = User.objects.create_user("brake", password="a-long-passphrase", is_staff=True)
    user.user_permissions.set(Permission.objects.filter(codename__in=["view_backfillrun", "control_backfillrun"]))
    client = Client()
    client.force_login(user)
    yield client
    LogEntry.objects.filter(user=user).delete()
    user.delete()


@pytest.mark.django_db(transaction=True)
def test_the_admin_brake_asks_acts_and_logs(brake_user: Client, running_run: BackfillRun) -> None:
    page = brake_user.get(reverse("admin:calls_backfillrun_change", args=[running_run.pk])).content.decode()
    assert "brake-pause" in page and "brake-cancel" in page and "brake-resume" not in page
    operations = brake_user.get(reverse("admin:operations")).content.decode()
    assert "brake-pause" in operations

    pause = reverse("admin:calls_backfillrun_brake", args=[running_run.pk, "pause"])
    confirm = brake_user.get(pause)
    assert confirm.status_code == 200 and 'id="brake-form"' in confirm.content.decode()
    running_run.refresh_from_db()
    assert running_run.status == "running"  # asking changed nothing

    assert brake_user.post(pause).status_code == 302
    running_run.refresh_from_db()
    assert (running_run.status, running_run.paused_by) == ("paused", "brake")
    entry = LogEntry.objects.get(object_id=str(running_run.pk))
    assert entry.user.username == "brake" and "Paused" in entry.get_change_message()
    page = brake_user.get(reverse("admin:calls_backfillrun_change", args=[running_run.pk])).content.decode()
    assert "paused by brake at" in page and "brake-resume" in page

    brake_user.post(reverse("admin:calls_backfillrun_brake", args=[running_run.pk, "cancel"]))
    running_run.refresh_from_db()
    assert (running_run.status, running_run.cancelled_by) == ("cancelled", "brake")


@pytest.mark.django_db(transaction=True)
@pytest.mark.parametrize("action", ["pause", "cancel"])
@pytest.mark.parametrize("method", ["get", "post"])
def test_the_admin_brake_of_an_old_run_refuses_and_changes_nothing(brake_user: Client, method: str, action: str,
                                                                    django_db_setup: None) -> None:
    """An old run's brake URL (a bookmark, the browser's history) acts on no run, least of all the current one."""
    url = database.sqlalchemy_url()
    run_sql(url, "INSERT INTO backfill_runs (backfill, status) VALUES ('messages', 'completed')")
    run_sql(url, "INSERT INTO backfill_runs (backfill, status) VALUES ('messages', 'running')")
    old, current = BackfillRun.objects.order_by("id")
    try:
        brake = reverse("admin:calls_backfillrun_brake", args=[old.pk, action])
        response = getattr(brake_user, method)(brake, follow=True)
        shown = [str(message) for message in response.context["messages"]]
        assert shown == [f"run {old.pk} of messages is not its current run (run {current.pk} is): the brake acts on "
                         f"the current run only; nothing was {control.DONE[action]}"]
        assert [(run.pk, run.status) for run in BackfillRun.objects.order_by("id")] == [
            (old.pk, "completed"), (current.pk, "running")]
        assert not LogEntry.objects.filter(object_id__in=[str(old.pk), str(current.pk)]).exists()
    finally:
        run_sql(url, "TRUNCATE backfill_runs CASCADE")


@pytest.mark.django_db(transaction=True)
def test_the_admin_brake_needs_its_permission(admin_client: Client, running_run: BackfillRun,
                                              django_db_setup: None) -> None:
    viewer = User.objects.create_user("viewer", password="a-long-passphrase", is_staff=True)
    viewer.user_permissions.set(Permission.objects.filter(codename="view_backfillrun"))
    client = Client()
    client.force_login(viewer)
    try:
        page = client.get(reverse("admin:calls_backfillrun_change", args=[running_run.pk])).content.decode()
        assert "brake-pause" not in page
        assert client.post(reverse("admin:calls_backfillrun_brake", args=[running_run.pk, "pause"])).status_code == 403
        running_run.refresh_from_db()
        assert running_run.status == "running"
    finally:
        viewer.delete()


@pytest.mark.django_db(transaction=True)
def test_a_run_whose_heartbeat_stopped_shows_as_stalled(admin_client: Client, running_run: BackfillRun) -> None:
    run_sql(database.sqlalchemy_url(), "UPDATE backfill_runs SET heartbeat_at = now() - interval '10 minutes'")
    listing = admin_client.get(reverse("admin:calls_backfillrun_changelist")).content.decode()
    assert "stalled (no heartbeat since" in listing
    assert "stalled (no heartbeat since" in admin_client.get(reverse("admin:operations")).content.decode()


def test_the_brake_needs_the_schema_that_records_it(empty_db: sa.URL) -> None:
    from schema_engine import commands

    commands.upgrade(revision="005_backfill_runs", url=empty_db)
    with pytest.raises(backfill.SchemaNotReady, match="006_backfill_controls"):
        backfill.ensure_schema(url=empty_db)
