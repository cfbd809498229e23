"""Schema changes reach the replica before the next step; the admin reads from the replica, or says why not."""
from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import psycopg
import sqlalchemy as sa

from calls.sample_data import generate_sample_data
from schema_engine import commands, database, replicas, state
from tests.conftest import HEAD, REVISIONS, ROOT, django_url, wait_for
from tests.topology.conftest import Replay, Topology, host_env, manage


def replayed(url: sa.URL) -> tuple[str, ...]:
    try:
        return state.status(url=url).current
    except Exception:  # noqa: BLE001 - not replayed yet: the database or the table is not there
        return ()


def lag_over(primary: sa.URL, seconds: float) -> bool:
    """Whether the paused replica reports more lag than ``seconds`` (a transaction each look: WAL makes it report)."""
    with psycopg.connect(django_url(primary), autocommit=True) as conn:
        conn.execute("SELECT txid_current()")
        lag = conn.execute("SELECT EXTRACT(epoch FROM max(replay_lag)) FROM pg_stat_replication").fetchone()[0]
    return (lag or 0) > seconds


def upgrade_until_it_waits(topology: Topology, **env: str) -> tuple[subprocess.Popen[str], list[str]]:
    """Start ``migrate_schema upgrade head`` and read its output up to the line saying it waits for the replicas."""
    upgrade = subprocess.Popen([sys.executable, "manage.py", "migrate_schema", "upgrade", "head"], cwd=ROOT,
                               env=host_env(topology, PYTHONUNBUFFERED="1", **env), stdout=subprocess.PIPE,
                               stderr=subprocess.PIPE, text=True)
    lines = []
    assert upgrade.stdout is not None
    for line in upgrade.stdout:
        lines.append(line)
        if "waiting for the replicas to replay" in line:
            break
    return upgrade, lines


def test_an_upgrade_waits_for_the_replica_to_replay_each_revision(topology_db: Topology, replay: Replay) -> None:
    replay.pause()
    upgrade, lines = upgrade_until_it_waits(topology_db)
    assert f"waiting for the replicas to replay {REVISIONS[0]}" in lines[-1], lines
    assert state.status(url=topology_db.primary).current == (REVISIONS[0],)  # the next one waits for the replica
    replay.resume()
    out, err = upgrade.communicate(timeout=600)
    assert upgrade.returncode == 0, out + err
    # Success is reported once the replica has replayed the last revision too.
    assert replayed(topology_db.replica) == (HEAD,)


def test_an_upgrade_stops_in_one_line_when_the_replica_does_not_catch_up(topology_db: Topology,
                                                                         replay: Replay) -> None:
    replay.pause()
    result = manage(topology_db, "migrate_schema", "upgrade", "head", MIGRATION_REPLICA_WAIT_SECONDS="0.5")
    assert result.returncode == 1
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and f"has not replayed revision {REVISIONS[0]} within 0.5s" in lines[0], result.stderr
    assert state.status(url=topology_db.primary).current == (REVISIONS[0],)


def test_plan_reports_the_replica_and_refuses_while_it_lags_too_far(topology_db: Topology, replay: Replay) -> None:
    commands.upgrade(revision=REVISIONS[-2], url=topology_db.primary)
    replay.pause()
    wait_for(lambda: lag_over(topology_db.primary, 1.0))
    result = manage(topology_db, "migrate_schema", "plan", MIGRATION_REPLICA_WAIT_SECONDS="1")
    assert result.returncode == 3  # not safe, as for any plan problem
    assert "  replica walreceiver (127.0.0.1): streaming, " in result.stdout, result.stdout
    assert "longer than the upgrade waits for it (MIGRATION_REPLICA_WAIT_SECONDS 1s)" in result.stderr
    replay.resume()
    wait_for(lambda: replayed(topology_db.replica) == (REVISIONS[-2],))
    assert manage(topology_db, "migrate_schema", "plan", MIGRATION_REPLICA_WAIT_SECONDS="1").returncode == 0


ADMIN_PROBE = """
from django.contrib.auth import get_user_model
from django.test import Client
client = Client()
client.force_login(get_user_model().objects.get(username="ops"))
page = client.get("/admin/calls/call/", secure=True)
print(page.status_code, "replica-notice" in page.content.decode(), "+15550009999" in page.content.decode())
operations = client.get("/admin/operations/", secure=True).content.decode()
print("walreceiver" in operations, '<td id="replica-revision">' + "{head}" in operations)
"""


def admin_probe(topology: Topology, **env: str) -> list[str]:
    result = manage(topology, "shell", "-v", "0", "-c", ADMIN_PROBE.format(head=HEAD), ALLOWED_HOSTS="testserver",
                    **env)
    assert result.returncode == 0, result.stderr
    return result.stdout.split()


def test_the_admin_reads_from_the_replica_and_falls_back_to_the_primary_saying_so(
        topology_db: Topology, replay: Replay) -> None:
    assert manage(topology_db, "migrate_schema").returncode == 0
    created = manage(topology_db, "createsuperuser", "--noinput", "--username", "ops", "--email", "o@example.com",
                     DJANGO_SUPERUSER_PASSWORD="a-long-passphrase")
    assert created.returncode == 0, created.stderr
    wait_for(lambda: replayed(topology_db.replica) == (HEAD,))
    # The replica stops replaying; a call is written on the primary after that.
    replay.pause()
    with psycopg.connect(django_url(topology_db.primary), autocommit=True) as conn:
        conn.execute("INSERT INTO calls (phone_number, status, tier, created_at) "
                     "VALUES ('+15550009999', 'completed', 'tier1', now())")
    # Within the lag allowed, the list reads from the replica, which has not seen the new call.
    assert admin_probe(topology_db, DATABASE_REPLICA_MAX_LAG="3600") == ["200", "False", "False", "True", "True"]
    wait_for(lambda: lag_over(topology_db.primary, 1.0))
    # Past it, from the primary, with the notice.
    assert admin_probe(topology_db, DATABASE_REPLICA_MAX_LAG="1")[:3] == ["200", "True", "True"]
    # The replica down: from the primary, with the notice.
    down = topology_db.replica.set(port=1)
    probe = admin_probe(topology_db, DATABASE_REPLICA_URL=django_url(down))
    assert probe[:3] == ["200", "True", "True"]


def deploy(topology: Topology, backups: Path, **env: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(["bash", str(ROOT / "scripts" / "deploy")], cwd=ROOT, capture_output=True, text=True,
                          env=host_env(topology, ENV_FILE="/dev/null", BACKUP_DIR=str(backups), PYTHON=sys.executable,
                                       **env), timeout=600)


def test_a_deploy_through_the_topology_reaches_the_replica(topology_db: Topology, tmp_path: Path) -> None:
    commands.upgrade(revision="003_context_management", url=topology_db.primary)
    with database.connect(topology_db.primary) as conn:
        generate_sample_data(connection=conn, calls=20, seed=4)
    deployed = deploy(topology_db, tmp_path)
    assert deployed.returncode == 0, deployed.stdout + deployed.stderr
    assert "==> step 7:" in deployed.stdout and "waiting for the replicas to replay" not in deployed.stderr
    # The rehearsal ran on the primary, its scratch copy streamed to the replica and dropped there too.
    assert "  rehearsal: 3 revision(s) applied to the copy in " in deployed.stdout
    assert replayed(topology_db.replica) == (HEAD,)


def test_a_deploy_stops_at_the_plan_while_the_replica_lags(topology_db: Topology, replay: Replay,
                                                           tmp_path: Path) -> None:
    commands.upgrade(revision="003_context_management", url=topology_db.primary)
    replay.pause()
    wait_for(lambda: lag_over(topology_db.primary, 1.0))
    deployed = deploy(topology_db, tmp_path, MIGRATION_REPLICA_WAIT_SECONDS="1")
    assert deployed.returncode == 1
    assert "deploy: step 2 (plan: " in deployed.stderr and "==> step 3" not in deployed.stdout
    assert "replica walreceiver (127.0.0.1) is " in deployed.stderr and "let it catch up first" in deployed.stderr
    assert state.status(url=topology_db.primary).current == ("003_context_management",)


def test_a_role_without_pg_monitor_waits_on_the_replicas_own_replay(unprivileged_db: Topology, replay: Replay) -> None:
    replay.pause()
    upgrade, lines = upgrade_until_it_waits(unprivileged_db, MIGRATION_REPLICA_WAIT_SECONDS="60")
    assert f"waiting for the replicas to replay {REVISIONS[0]}: 127.0.0.1:" in lines[-1], lines
    assert state.status(url=unprivileged_db.primary).current == (REVISIONS[0],)  # it waits for the paused replica
    replay.resume()
    out, err = upgrade.communicate(timeout=600)
    assert upgrade.returncode == 0, "".join(lines) + out + err
    assert replayed(unprivileged_db.replica) == (HEAD,)


def test_without_pg_monitor_nor_a_replica_url_the_upgrade_refuses_at_once_naming_the_grant(
        unprivileged_db: Topology) -> None:
    result = manage(unprivileged_db, "migrate_schema", "upgrade", "head", DATABASE_REPLICA_URL="",
                    MIGRATION_REPLICA_WAIT_SECONDS="30")
    assert result.returncode == 1
    lines = result.stderr.strip().splitlines()
    role = unprivileged_db.primary.username
    assert len(lines) == 1 and f"run 'GRANT pg_monitor TO {role}' as a superuser" in lines[0], result.stderr
    assert "DATABASE_REPLICA_URL" in lines[0] and lines[0].endswith("nothing was changed"), lines
    assert state.status(url=unprivileged_db.primary).current == ()


def test_plan_never_reports_a_replica_it_cannot_read_as_caught_up(unprivileged_db: Topology, replay: Replay) -> None:
    assert manage(unprivileged_db, "migrate_schema", "upgrade", REVISIONS[-2]).returncode == 0
    blind = manage(unprivileged_db, "migrate_schema", "plan", DATABASE_REPLICA_URL="")
    assert blind.returncode == 3, blind.stdout + blind.stderr
    assert "s behind" not in blind.stdout and "its replay is hidden from this role" in blind.stdout, blind.stdout
    assert f"GRANT pg_monitor TO {unprivileged_db.primary.username}" in blind.stderr
    # With DATABASE_REPLICA_URL the replica tells its own replay: caught up, then, paused, behind.
    assert manage(unprivileged_db, "migrate_schema", "plan").returncode == 0
    replay.pause()
    with psycopg.connect(django_url(unprivileged_db.primary), autocommit=True) as primary:
        # A transaction at each look: WAL that the replica receives and does not replay.
        wait_for(lambda: primary.execute("SELECT txid_current()") and _own_lag(unprivileged_db.replica) > 1.0)
    paused = manage(unprivileged_db, "migrate_schema", "plan", MIGRATION_REPLICA_WAIT_SECONDS="1")
    assert paused.returncode == 3
    assert "  replica 127.0.0.1:" in paused.stdout and "(DATABASE_REPLICA_URL): replay paused, " in paused.stdout
    assert "longer than the upgrade waits for it (MIGRATION_REPLICA_WAIT_SECONDS 1s)" in paused.stderr


OPERATIONS_PROBE = """
from django.contrib.auth import get_user_model
from django.test import Client
client = Client()
client.force_login(get_user_model().objects.get(username="ops"))
page = client.get("/admin/operations/", secure=True).content.decode()
print(page[page.index('id="replica-status"'):page.index('id="backfill-status"')])
"""


def operations_replicas(topology: Topology, **env: str) -> str:
    """The operations page's replica section, as user ``ops`` sees it on an application host."""
    result = manage(topology, "shell", "-v", "0", "-c", OPERATIONS_PROBE, ALLOWED_HOSTS="testserver", **env)
    assert result.returncode == 0, result.stderr
    return result.stdout


def test_the_operations_page_names_the_grant_for_a_replica_hidden_from_its_role(unprivileged_db: Topology) -> None:
    assert manage(unprivileged_db, "migrate_schema").returncode == 0
    created = manage(unprivileged_db, "createsuperuser", "--noinput", "--username", "ops", "--email", "o@example.com",
                     DJANGO_SUPERUSER_PASSWORD="a-long-passphrase")
    assert created.returncode == 0, created.stderr
    blind = operations_replicas(unprivileged_db, DATABASE_REPLICA_URL="")
    role = unprivileged_db.primary.username
    hidden = (f'<td colspan="3" class="replica-hidden">replay hidden from this role '
              f'(<code>GRANT pg_monitor TO {role}</code>')
    assert hidden in blind, blind
    assert "None" not in blind and "bytes" not in blind and " s</td>" not in blind, blind
    # With DATABASE_REPLICA_URL the replica tells its own replay.
    told = operations_replicas(unprivileged_db)
    assert "(DATABASE_REPLICA_URL)</td>" in told and "<td>replaying</td>" in told and "replay hidden" not in told, told


def _own_lag(replica: sa.URL) -> float:
    with psycopg.connect(django_url(replica), autocommit=True) as conn:
        return conn.execute(replicas.OWN_LAG_SQL).fetchone()[1]
