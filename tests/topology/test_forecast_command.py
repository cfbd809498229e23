"""``manage.py migrate_schema forecast`` end to end, as an operator runs it on an application host of the topology.

A small database at 005 with sample data; pending: 006. The command copies the primary, runs the
default workload on the copy, applies 006 there and measures it, prints or writes its verdict, its
chart and the last forecast; the copy is gone afterwards.
"""
from __future__ import annotations

import json
import stat
import subprocess
import xml.etree.ElementTree as ET
from pathlib import Path

import sqlalchemy as sa

from calls.sample_data import generate_sample_data
from schema_engine import commands, database, state
from tests.conftest import REVISIONS, ROOT
from tests.topology.conftest import Topology, host_env, manage
from tests.topology.test_forecast_base import captured_while

AT = REVISIONS[-2]  # 005: 006 pending


def prepared(topology: Topology) -> None:
    commands.upgrade(revision=AT, url=topology.primary)
    engine = database.create_engine(topology.primary)
    try:
        with engine.begin() as conn:
            generate_sample_data(connection=conn, calls=30, seed=26)
    finally:
        engine.dispose()


def write_a_little(url: sa.URL) -> None:
    """What an application might do in a moment: a few calls updated, each in its own transaction."""
    engine = database.create_engine(url)
    try:
        for call_id in range(1, 21):
            with engine.begin() as conn:
                conn.execute(sa.text("UPDATE calls SET updated_at = now() WHERE id = :id"), {"id": call_id})
    finally:
        engine.dispose()


def test_a_forecast_measures_the_pending_revision_on_a_copy_and_keeps_it(topology_db: Topology, tmp_path: Path) -> None:
    prepared(topology_db)
    chart, last = tmp_path / "forecast.svg", tmp_path / "last.json"
    result = manage(topology_db, "migrate_schema", "forecast", "--json", "--chart", str(chart), "--sample-batches", "2",
                    FORECAST_LAST_FILE=str(last))
    assert result.returncode == 0, result.stderr
    found = json.loads(result.stdout)
    (revision,) = found["forecast"]["revisions"]
    assert revision["revision"] == REVISIONS[-1] and not revision["error"]
    assert revision["seconds"] > 0 and revision["wal_bytes"] > 0
    assert found["forecast"]["samples"] and found["safe"] is True and found["problems"] == []
    assert stat.S_IMODE(chart.stat().st_mode) == 0o600 and stat.S_IMODE(last.stat().st_mode) == 0o600
    assert ET.parse(chart).getroot().tag.endswith("svg")
    assert json.loads(last.read_text())["forecast"]["revisions"][0]["revision"] == REVISIONS[-1]
    assert state.status(url=topology_db.primary).current == (AT,)  # the source is untouched


def test_a_forecast_past_a_limit_exits_3_naming_the_revision_and_the_limit(topology_db: Topology,
                                                                           tmp_path: Path) -> None:
    prepared(topology_db)
    result = manage(topology_db, "migrate_schema", "forecast", "--sample-batches", "1",
                    FORECAST_MAX_DURATION_SECONDS="0", FORECAST_LAST_FILE=str(tmp_path / "last.json"))
    assert result.returncode == 3, result.stdout + result.stderr
    assert "FORECAST_MAX_DURATION_SECONDS" in result.stderr and "Traceback" not in result.stderr
    assert f"revision {REVISIONS[-1]}" in result.stdout


def test_a_deploy_with_the_forecast_stops_before_applying_when_a_limit_is_passed_and_replays_a_capture(
        topology_db: Topology, tmp_path: Path) -> None:
    prepared(topology_db)
    env = {**host_env(topology_db), "BACKUP_DIR": str(tmp_path / "backups"), "DEPLOY_FORECAST": "1",
           "FORECAST_LAST_FILE": str(tmp_path / "last.json")}
    refused = subprocess.run(["bash", "scripts/deploy"], cwd=ROOT, capture_output=True, text=True, timeout=600,
                             env={**env, "FORECAST_MAX_DURATION_SECONDS": "0"})
    assert refused.returncode == 1, refused.stdout + refused.stderr
    assert "deploy: step 3b (forecast: the pending revisions on a copy with data, under traffic) failed" \
        in refused.stderr
    assert state.status(url=topology_db.primary).current == (AT,)  # nothing applied
    capture = tmp_path / "capture.log"
    for missing in ({"DEPLOY_FORECAST_CAPTURE": str(capture)},
                    {"DEPLOY_FORECAST": "0", "DEPLOY_FORECAST_CAPTURE": str(capture)}):
        refused = subprocess.run(["bash", "scripts/deploy"], cwd=ROOT, capture_output=True, text=True, timeout=600,
                                 env={**env, **missing})
        assert refused.returncode == 2 and len(refused.stderr.strip().splitlines()) == 1, refused.stderr
        assert "DEPLOY_FORECAST" in refused.stderr and not refused.stdout
    taken = captured_while(lambda: write_a_little(topology_db.primary), topology_db.primary, capture,
                           databases=[topology_db.primary.database])
    deployed = subprocess.run(["bash", str(ROOT / "scripts" / "deploy")], cwd=tmp_path, capture_output=True,
                              text=True, timeout=600, env={**env, "DEPLOY_FORECAST_CAPTURE": capture.name})  # relative
    assert deployed.returncode == 0, deployed.stdout + deployed.stderr
    assert "==> step 3b: forecast" in deployed.stdout and "Within every limit" in deployed.stdout
    assert f"traffic: capture {capture} ({taken.statements:,} statements" in deployed.stdout
    assert state.status(url=topology_db.primary).current == (REVISIONS[-1],)


def test_a_capture_from_the_command_line_is_a_new_private_file_and_bad_input_is_refused(
        topology_db: Topology, tmp_path: Path) -> None:
    prepared(topology_db)
    capture = tmp_path / "var" / "capture.log"  # a folder not made yet, as in a fresh checkout
    made = manage(topology_db, "migrate_schema", "capture", str(capture), "--seconds", "0.5")
    assert made.returncode == 0, made.stderr
    assert made.stdout.splitlines()[-1].startswith(f"Captured {capture}: ") and capture.exists()
    assert stat.S_IMODE(capture.stat().st_mode) == 0o600 and stat.S_IMODE(capture.parent.stat().st_mode) == 0o700
    again = manage(topology_db, "migrate_schema", "capture", str(capture), "--seconds", "0.5")
    assert again.returncode == 1 and len(again.stderr.strip().splitlines()) == 1  # never over a file
    for args in (["--seconds", "0"], []):
        refused = manage(topology_db, "migrate_schema", "capture", str(tmp_path / "other.log"), *args)
        assert refused.returncode == 1 and "Traceback" not in refused.stderr, refused.stderr
        assert len(refused.stderr.strip().splitlines()) == 1, refused.stderr
