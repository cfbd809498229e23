"""Lint migration SQL with squawk (the ``squawk-cli`` package), configured by ``.squawk.toml``."""
from __future__ import annotations

import json
import re
import shutil
import subprocess
import sys
import tempfile
from dataclasses import dataclass
from pathlib import Path

from schema_engine.errors import LintUnavailable

ROOT = Path(__file__).resolve().parent.parent
SQUAWK_CONFIG = ROOT / ".squawk.toml"


# Findings accepted in revisions released before this check existed, each with why. A new
# revision gets none: fix what squawk finds, or argue for an entry here in review.
ACCEPTED_FINDINGS: dict[str, dict[str, str]] = {
    "002_voice_agent_integration": {
        # uq_calls_call_sid and ix_calls_current_agent are on columns this revision adds (all NULL),
        # built under the revision's lock on calls, which blocks writes for the build (measured by
        # bench/migration_timing.py); new revisions use helpers.build_index (CONCURRENTLY).
        "disallowed-unique-constraint": "unique constraint on a column added in the same revision",
        "constraint-missing-not-valid": "the same unique constraint",
        "require-concurrent-index-creation": "ix_calls_current_agent, on a column added in the same revision",
    },
    "003_context_management": {
        "require-concurrent-index-creation": "ix_calls_context_pruning, on columns added in the same revision",
    },
}
# Archive tables are this project's own way of keeping data across a downgrade (migrations_alembic/
# helpers.py): an upgrade drops one after putting its rows or values back. No client reads them,
# which is what squawk's ban-drop-table protects; any revision may drop them.
_DROPS_AN_ARCHIVE = re.compile(r"DROP TABLE (IF EXISTS )?archive_\w+;", re.IGNORECASE)


@dataclass(frozen=True)
class Finding:
    rule: str
    message: str
    line: int
    statement: str

    def __str__(self) -> str:
        return f"{self.rule}: {self.message} (line {self.line}: {self.statement})"


def squawk_executable() -> str:
    # The virtualenv's own (pip install squawk-cli), else one on PATH.
    beside = Path(sys.executable).with_name("squawk")
    found = str(beside) if beside.exists() else shutil.which("squawk")
    if not found:
        raise LintUnavailable("squawk is not installed: pip install squawk-cli (it is in the project's dependencies)")
    return found


def unaccepted(revision: str, findings: list[Finding]) -> list[Finding]:
    """Return the findings not accepted for ``revision`` (ACCEPTED_FINDINGS), nor the drop of an archive table."""
    accepted = ACCEPTED_FINDINGS.get(revision, {})
    return [f for f in findings if f.rule not in accepted
            and not (f.rule == "ban-drop-table" and _DROPS_AN_ARCHIVE.fullmatch(f.statement))]


def lint_sql(sql: str) -> list[Finding]:
    """Return squawk's findings on ``sql`` (PostgreSQL), with the rules ``.squawk.toml`` leaves off."""
    with tempfile.TemporaryDirectory() as scratch:
        path = Path(scratch) / "migration.sql"
        path.write_text(sql)
        result = subprocess.run([squawk_executable(), "--config", str(SQUAWK_CONFIG), "--reporter", "json", str(path)],
                                capture_output=True, text=True, timeout=120)
    if result.returncode not in (0, 1) or not result.stdout.strip().startswith("["):
        output = (result.stderr or result.stdout).strip().splitlines()
        raise LintUnavailable(f"squawk failed: {output[0] if output else f'exit {result.returncode}'}")
    lines = sql.splitlines()
    # squawk counts lines from 0.
    return [Finding(rule=item["rule_name"], message=item["message"], line=item["line"] + 1,
                    statement=lines[item["line"]].strip()[:120] if 0 <= item["line"] < len(lines) else "")
            for item in json.loads(result.stdout)]
