"""``scripts/topology``: bad arguments and settings are refused before anything starts."""
from __future__ import annotations

import os
import subprocess

import pytest

from tests.conftest import ROOT


@pytest.mark.parametrize(("args", "env"), [
    (["sideways"], {}), ([], {}), (["down", "--force"], {}),
    (["up"], {"TOPOLOGY_PRIMARY_PORT": "5432; rm -rf /"}), (["up"], {"TOPOLOGY_DATABASE": "x'; DROP DATABASE postgres; --"}),
])
def test_bad_arguments_and_settings_are_one_line_and_start_nothing(tmp_path, args: list[str], env: dict[str, str]) -> None:
    result = subprocess.run(["bash", str(ROOT / "scripts" / "topology"), *args], cwd=ROOT, capture_output=True,
                            text=True, env={**os.environ, "TOPOLOGY_DIR": str(tmp_path / "topology"), **env})
    assert result.returncode == 2
    assert len(result.stderr.strip().splitlines()) == 1 and result.stdout == ""
    assert not (tmp_path / "topology").exists()
