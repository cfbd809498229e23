"""``scripts/topology``: bad arguments and settings are refused before anything starts."""
from __future__ import annotations

import os
import re
import subprocess

import pytest

from tests.conftest import ROOT


@pytest.mark.parametrize(("args", "env"), [
    (["sideways"], {}), ([], {}), (["down", "--force"], {}),
    (["up"], {"TOPOLOGY_PRIMARY_PORT": "5432; rm -rf /"}),
    (["up"], {"TOPOLOGY_DATABASE": "x'; DROP DATABASE postgres; --"}),
])
def test_bad_arguments_and_settings_are_one_line_and_start_nothing(tmp_path, args: list[str],
                                                                   env: dict[str, str]) -> None:
    result = subprocess.run(["bash", str(ROOT / "scripts" / "topology"), *args], cwd=ROOT, capture_output=True,
                            text=True, env={**os.environ, "TOPOLOGY_DIR": str(tmp_path / "topology"), **env})
    assert result.returncode == 2
    assert len(result.stderr.strip().splitlines()) == 1 and result.stdout == ""
    assert not (tmp_path / "topology").exists()


def test_up_prints_the_settings_of_an_application_host_in_the_topology() -> None:
    names = ("DATABASE_URL", "MIGRATION_DATABASE_URL", "DATABASE_REPLICA_URL")
    urls = [os.environ.get(f"TEST_TOPOLOGY_{name}") for name in names]
    if not (all(urls) and os.environ.get("TOPOLOGY_DIR")):
        message = "the topology is not up: run 'scripts/topology up' with TOPOLOGY_DIR exported"
        if os.environ.get("REQUIRE_TOPOLOGY") == "1":
            pytest.fail(message)
        pytest.skip(message)
    result = subprocess.run(["bash", str(ROOT / "scripts" / "topology"), "up"], cwd=ROOT, capture_output=True,
                            text=True, timeout=600)  # idempotent: all three are running already
    assert result.returncode == 0, result.stderr
    printed = result.stdout.strip().splitlines()
    assert printed == [*(f"{name}={url}" for name, url in zip(names, urls)), "DATABASE_POOL_MODE=transaction"]
    # .ci/run exports the URL lines with a TEST_TOPOLOGY_ prefix; the pool mode is not one of them.
    assert [line for line in printed if re.match(r"^[A-Z_]+=postgresql://", line)] == printed[:3]
