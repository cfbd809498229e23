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

from alembic.script import Script

from schema_engine.errors import InvalidAcceptedFindings, LintUnavailable

ROOT = Path(__file__).resolve().parent.parent
SQUAWK_CONFIG = ROOT / ".squawk.toml"


# A revision accepts squawk's findings in the revision itself: a module-level dict of rule name
# to why, e.g. a contract step that drops a column the code no longer reads. ``plan`` shows each
# accepted finding with its reason and refuses the rest.
ACCEPTED_FINDINGS_NAME = "ACCEPTED_LINT_FINDINGS"
# Archive tables are this project's own way of keeping data across a downgrade (migrations_alembic/
# helpers.py): an upgrade drops one after putting its rows or values back. No client reads them,
# which is what squawk's ban-drop-table protects; any revision may drop them.
_DROPS_AN_ARCHIVE = re.compile(r"DROP TABLE (IF EXISTS )?archive_\w+;", re.IGNORECASE)
# The same for the engine's own sync trigger functions (versioning.py): a contract or an undone
# expand drops the function its expand made; no client calls one, which is what ban-drop-function protects.
_DROPS_A_SYNC_FUNCTION = re.compile(r'DROP FUNCTION IF EXISTS public\."_sync_\w+"\(\);', re.IGNORECASE)


# How this project does what a rule asks for; any finding may instead be accepted in the revision.
PROJECT_FIXES = {
    "require-concurrent-index-creation": "build it with helpers.build_index inside "
                                         "op.get_context().autocommit_block(), as revision --autogenerate writes it",
    "require-concurrent-index-deletion": "drop it with helpers.drop_index inside op.get_context().autocommit_block()",
    "adding-required-field": "add the column nullable, fill it, then helpers.set_not_null in a later revision "
                             "(revision --autogenerate writes both), or give it a server default",
    "adding-not-nullable-field": "helpers.set_not_null (CHECK NOT VALID, VALIDATE, then SET NOT NULL)",
}


@dataclass(frozen=True)
class Finding:
    rule: str
    message: str
    line: int
    statement: str

    def __str__(self) -> str:
        fix = PROJECT_FIXES.get(self.rule, "")
        accept = f'or accept it in the revision: {ACCEPTED_FINDINGS_NAME} = {{"{self.rule}": "why"}}'
        return f"{self.rule}: {self.message} (line {self.line}: {self.statement}); {fix + ', ' if fix else ''}{accept}"


def squawk_executable() -> str:
    # The virtualenv's own (pip install squawk-cli), else one on PATH.
    beside = Path(sys.executable).with_name("squawk")
    found = str(beside) if beside.exists() else shutil.which("squawk")
    if not found:
        raise LintUnavailable("squawk is not installed: pip install squawk-cli (it is in the project's dependencies)")
    return found


def accepted_findings(script: Script) -> dict[str, str]:
    """Return the squawk rules ``script``'s revision accepts, each with its reason (``ACCEPTED_LINT_FINDINGS``).

    Raises ``InvalidAcceptedFindings`` unless it is a dict of rule names to reasons, each reason said.
    """
    accepted = getattr(script.module, ACCEPTED_FINDINGS_NAME, {})
    if not isinstance(accepted, dict) or not all(
            isinstance(rule, str) and isinstance(why, str) and why.strip() for rule, why in accepted.items()):
        raise InvalidAcceptedFindings(
            f"revision {script.revision}: {ACCEPTED_FINDINGS_NAME} must map each squawk rule it accepts to the reason, "
            'e.g. {"ban-drop-column": "calls.legacy_notes is no longer read (contract step of 007)"}')
    return accepted


def unaccepted(findings: list[Finding], accepted: dict[str, str]) -> list[Finding]:
    """Return the findings whose rule ``accepted`` does not name, less the drop of an archive table or sync function."""
    return [f for f in findings if f.rule not in accepted
            and not (f.rule == "ban-drop-table" and _DROPS_AN_ARCHIVE.fullmatch(f.statement))
            and not (f.rule == "ban-drop-function" and _DROPS_A_SYNC_FUNCTION.fullmatch(f.statement))]


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
