"""Two real releases on one database through the topology's PgBouncer, across an expand/contract change.

The release before the change is this project as it is; the release after it is a copy whose
``Call`` model an operator edited (``outcome`` renamed ``call_outcome``, ``duration_seconds`` widened
to a ``BigIntegerField``, ``voice_id`` removed) and for which ``migrate_schema revision
--autogenerate --rename calls.outcome=call_outcome`` wrote the expand and contract revisions. Both
write through PgBouncer (transaction pooling) while the expand is applied, the new column filled,
rolled back, expanded again and contracted; every row each one wrote is read back through both
shapes.
"""
from __future__ import annotations

import json
import re
import shutil
import subprocess
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterator

import psycopg
import pytest
import sqlalchemy as sa

from tests.conftest import ROOT, django_url, wait_for
from tests.topology.conftest import Topology, host_env

WRITER = Path(__file__).with_name("release_writer.py")


def copy_project(target: Path) -> Path:
    """A copy of this project's tracked files (the installed .venv linked), as a release would be deployed."""
    tracked = subprocess.run(["git", "ls-files", "-z"], cwd=ROOT, capture_output=True, text=True, check=True)
    for name in filter(None, tracked.stdout.split("\0")):
        (target / name).parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(ROOT / name, target / name)
    (target / ".venv").symlink_to(ROOT / ".venv")
    shutil.copy2(WRITER, target / WRITER.name)
    return target


def edit_models(release: Path) -> None:
    """The operator's change to ``Call``: rename, widen, remove."""
    models = release / "calls" / "models.py"
    text = models.read_text()
    text = text.replace("    duration_seconds = models.IntegerField(", "    duration_seconds = models.BigIntegerField(")
    text = text.replace("    outcome = models.CharField(", "    call_outcome = models.CharField(")
    text, removed = re.subn(r"\n    voice_id = models\.CharField\([^)]*\)", "", text)
    assert removed == 1 and "call_outcome" in text and "BigIntegerField(null=True, blank=True)" in text
    models.write_text(text)
    admin = release / "calls" / "admin.py"  # the operator follows the rename in the admin too
    text = admin.read_text().replace('"outcome"', '"call_outcome"').replace('"voice_id", ', "")
    assert '"voice_id"' not in text
    admin.write_text(text)


@dataclass
class Release:
    """One release's code, and its writer while one runs."""

    label: str
    root: Path
    topology: Topology
    writer: subprocess.Popen[str] | None = None
    stop_file: Path = field(init=False)
    log_file: Path = field(init=False)

    def __post_init__(self) -> None:
        self.stop_file = self.root.parent / f"{self.label}.stop"
        self.log_file = self.root.parent / f"{self.label}.jsonl"

    def manage(self, *args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
        result = subprocess.run([sys.executable, "manage.py", *args], cwd=self.root, capture_output=True, text=True,
                                env=host_env(self.topology), timeout=600)
        if check:
            assert result.returncode == 0, f"{self.label}: manage.py {' '.join(args)}\n{result.stdout}{result.stderr}"
        return result

    def start(self) -> None:
        self.stop_file.unlink(missing_ok=True)
        self.writer = subprocess.Popen([sys.executable, WRITER.name, self.label, str(self.stop_file),
                                        str(self.log_file)], cwd=self.root, env=host_env(self.topology),
                                       stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        written = self.written_count()
        wait_for(lambda: self.written_count() >= written + 5 or self.writer.poll() is not None)
        assert self.writer.poll() is None, self.writer.communicate()

    def written_count(self) -> int:
        return len(self.log_file.read_text().splitlines()) if self.log_file.exists() else 0

    def keeps_writing(self) -> None:
        """Wait until it has written some more rows (it is alive, on the schema as it is now)."""
        assert self.writer is not None
        written = self.written_count()
        wait_for(lambda: self.written_count() >= written + 3 or self.writer.poll() is not None)
        assert self.writer.poll() is None, self.writer.communicate()

    def stop(self) -> None:
        assert self.writer is not None
        self.stop_file.touch()
        out, err = self.writer.communicate(timeout=300)
        assert self.writer.returncode == 0, f"{self.label} writer failed:\n{out}{err}"
        self.writer = None

    def expected(self) -> dict[int, dict[str, object]]:
        """Each row this release wrote, as it last wrote it."""
        rows: dict[int, dict[str, object]] = {}
        for line in self.log_file.read_text().splitlines():
            row = json.loads(line)
            rows[row.pop("id")] = row
        return rows


def rows(url: str, sql: str) -> dict[int, tuple]:
    with psycopg.connect(url) as conn:
        return {row[0]: row[1:] for row in conn.execute(sql)}


ADMIN_PROBE = """
from django.contrib.auth import get_user_model
from django.test import Client
from calls.models import Call
user, _ = get_user_model().objects.get_or_create(username="ops", defaults={"is_staff": True, "is_superuser": True})
client = Client()
client.force_login(user)
call = Call.objects.order_by("-id").first()
pages = [client.get("/admin/calls/call/", secure=True), client.get(f"/admin/calls/call/{call.id}/change/", secure=True)]
print(*[page.status_code for page in pages], "call_outcome" in pages[1].content.decode())
"""


def admin_pages(release: Release) -> list[str]:
    """The status of the admin's call list and a call's page in this release, and whether it shows call_outcome."""
    result = subprocess.run([sys.executable, "manage.py", "shell", "-v", "0", "-c", ADMIN_PROBE], cwd=release.root,
                            capture_output=True, text=True, timeout=300,
                            env={**host_env(release.topology), "ALLOWED_HOSTS": "testserver"})
    assert result.returncode == 0, result.stderr
    return result.stdout.split()


def pooler_console(topology: Topology, command: str) -> None:
    """Run ``command`` on PgBouncer's admin console (the topology's admin user, no password: trust)."""
    pooler = topology.pooler
    subprocess.run(["psql", "-X", "-q", "-h", pooler.host, "-p", str(pooler.port), "-U", pooler.username,
                    "-d", "pgbouncer", "-c", command], check=True, capture_output=True, text=True, timeout=60)


@pytest.fixture
def releases(topology_db: Topology, tmp_path: Path) -> Iterator[tuple[Release, Release]]:
    before = Release("before", copy_project(tmp_path / "before" / "project"), topology_db)
    after = Release("after", copy_project(tmp_path / "after" / "project"), topology_db)
    try:
        yield before, after
    finally:
        for release in (before, after):
            if release.writer is not None:
                release.stop_file.touch()
                release.writer.kill()
                release.writer.communicate()


def check_rows(topology: Topology, expand: str, releases: tuple[Release, ...], *, stopped: tuple[Release, ...] = (),
               contracted: bool = False) -> None:
    """Every row each release wrote is there in both shapes, the same in each: the old (``public``) and the
    new (``v_<expand>``), read in one snapshot; and, of a release that has stopped, as it last wrote it."""
    logged = {release.label: release.expected() for release in releases}  # first: a row is logged once committed
    if contracted:
        found = rows(psycopg_url(topology.primary),
                     f'SELECT id, call_outcome, duration_seconds, NULL, call_outcome, duration_seconds '
                     f'FROM "v_{expand}".calls')
    else:
        found = rows(psycopg_url(topology.primary),
                     f'SELECT c.id, c.outcome, c.duration_seconds, c.voice_id, v.call_outcome, v.duration_seconds '
                     f'FROM calls c FULL JOIN "v_{expand}".calls v ON v.id = c.id')
    for id_, (outcome, duration, _voice, call_outcome, new_duration) in found.items():
        assert (outcome, duration) == (call_outcome, new_duration), id_
    for release in releases:
        for id_, wrote in logged[release.label].items():
            assert id_ in found, (release.label, id_)
            if release in stopped:
                voice = None if contracted or release.label == "after" else wrote["voice_id"]
                assert found[id_][:3] == (wrote["outcome"], wrote["duration_seconds"], voice), (release.label, id_)


def psycopg_url(url: sa.URL) -> str:
    return django_url(url)


def deploy(release: Release, backups: Path, **env: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(["bash", "scripts/deploy"], cwd=release.root, capture_output=True, text=True, timeout=900,
                          env={**host_env(release.topology), "BACKUP_DIR": str(backups), **env})


def test_two_releases_write_through_pgbouncer_across_expand_rollback_and_contract(
        releases: tuple[Release, Release], topology_db: Topology, tmp_path: Path) -> None:
    before, after = releases
    before.manage("migrate_schema", "upgrade", "head")
    parent = before.manage("migrate_schema", "heads").stdout.split()[0]
    edit_models(after.root)
    written = after.manage("migrate_schema", "revision", "--autogenerate", "--rename", "calls.outcome=call_outcome",
                           "-m", "call outcome renamed, duration widened, voice id removed")
    versions = after.root / "migrations_alembic" / "versions"
    new_files = sorted(set(path.name for path in versions.glob("*.py")) -
                       set(path.name for path in (before.root / "migrations_alembic" / "versions").glob("*.py")))
    assert len(new_files) == 2, written.stdout
    texts = {name: (versions / name).read_text() for name in new_files}
    (expand_file,) = [name for name, text in texts.items() if "contracts = " not in text]
    expand = re.search(r"^revision: str = ['\"](\w+)['\"]", texts[expand_file], re.M).group(1)
    assert "RenameColumn('calls', 'outcome', 'call_outcome')" in texts[expand_file]
    assert "ChangeType('calls', 'duration_seconds'" in texts[expand_file]
    assert "DropColumn('calls', 'voice_id')" in texts[expand_file]

    # The release before the change at work, through PgBouncer, all along.
    before.start()
    # The operator deploys the change: expand applied, the contract deferred (the fill, the release before).
    # With the forecast step: it forecasts what the deploy applies (the expand; the contract waits) and its fill.
    first = deploy(after, tmp_path / "backups", DEPLOY_FORECAST="1", FORECAST_LAST_FILE=str(tmp_path / "last.json"))
    assert first.returncode == 0, first.stdout + first.stderr
    assert "Deferred " in first.stdout and "contract" in first.stdout, first.stdout
    forecast = json.loads((tmp_path / "last.json").read_text())["forecast"]
    assert [revision["revision"] for revision in forecast["revisions"]] == [expand]
    assert f"expand_{expand}" in [fill["name"] for fill in forecast["backfills"]]
    assert after.manage("migrate_schema", "-v", "0", "current").stdout.split()[0] == expand
    before.keeps_writing()
    after.start()
    after.keeps_writing()
    before.keeps_writing()
    check_rows(topology_db, expand, (before, after))
    assert admin_pages(before) == ["200", "200", "False"]  # the admin works on either version
    assert admin_pages(after) == ["200", "200", "True"]

    # Rolled back before the contract: instant, nothing either release wrote is lost.
    after.stop()
    check_rows(topology_db, expand, (before, after), stopped=(after,))
    after.manage("migrate_schema", "downgrade", parent)
    before.keeps_writing()
    old_shape = rows(psycopg_url(topology_db.primary), "SELECT id, outcome, duration_seconds FROM calls")
    for id_, wrote in after.expected().items():
        assert old_shape[id_] == (wrote["outcome"], wrote["duration_seconds"]), id_

    # Expanded again, filled, both at work; the contract refused while the release before is connected.
    again = deploy(after, tmp_path / "backups")
    assert again.returncode == 0, again.stdout + again.stderr
    after.start()
    after.manage("backfill_context")
    before.keeps_writing()
    after.keeps_writing()
    check_rows(topology_db, expand, (before, after))
    refused = after.manage("migrate_schema", "upgrade", "head", check=False)
    assert refused.returncode == 1
    assert "session(s) of the release before it are connected" in refused.stderr, refused.stderr

    # The release before stopped: the contract goes through, and the release after keeps writing.
    before.stop()
    check_rows(topology_db, expand, (before, after), stopped=(before,))
    pooler_console(topology_db, "RECONNECT")  # idle server connections keep their last client's name
    after.manage("backfill_context")
    wait_for(lambda: after.manage("migrate_schema", "plan", check=False).returncode == 0)
    final = deploy(after, tmp_path / "backups")
    assert final.returncode == 0, final.stdout + final.stderr
    assert "Deferred" not in final.stdout, final.stdout
    after.keeps_writing()
    after.stop()
    check_rows(topology_db, expand, (before, after), stopped=(before, after), contracted=True)
    assert after.manage("migrate_schema", "check").returncode == 0

    # After the contract, the downgrade puts the old shape back from the archive (voice_id too).
    after.manage("migrate_schema", "downgrade", expand)
    check_rows(topology_db, expand, (before, after), stopped=(before, after))
