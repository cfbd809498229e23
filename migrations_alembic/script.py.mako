<%doc>
    The message goes inside the docstring: its backslashes and quotes are escaped, so that no
    message (-m 'say """hi"""', a Windows path) can end the string or make an escape.
</%doc>\
"""${str(message).replace("\\", "\\\\").replace('"', '\\"')}

Revision ID: ${up_revision}
Revises: ${down_revision | comma,n}
Create Date: ${create_date}

<%
    notes = config.attributes.get("revision_notes", {}).get(up_revision, [])
    data_checks = config.attributes.get("revision_data_checks", {}).get(up_revision, {})
    accepted = config.attributes.get("revision_accepted_findings", {}).get(up_revision, {})
    module_lines = config.attributes.get("revision_module", {}).get(up_revision, [])
%>\
Say here what this revision changes and why; for an index, the query it serves.
% for note in notes:
${note}
% endfor
"""
from __future__ import annotations

from typing import Sequence

import sqlalchemy as sa
from alembic import op
${imports if imports else ""}

revision: str = ${repr(up_revision)}
down_revision: str | Sequence[str] | None = ${repr(down_revision)}
branch_labels: str | Sequence[str] | None = ${repr(branch_labels)}
depends_on: str | Sequence[str] | None = ${repr(depends_on)}
% if accepted:
# squawk's findings this revision accepts, each with why (migrate_schema plan shows them).
ACCEPTED_LINT_FINDINGS = {
% for rule, why in accepted.items():
    ${repr(rule)}: ${repr(why)},
% endfor
}
% else:
# squawk's findings this revision accepts, each with why (migrate_schema plan shows them), e.g.
# ACCEPTED_LINT_FINDINGS = {"ban-drop-column": "calls.legacy_notes is no longer read (contract step)"}
% endif
% if data_checks:
# Data pre-checks (schema_engine/prechecks.py): each query must return no row, or the upgrade is refused.
DATA_CHECKS = {
% for name, query in data_checks.items():
    ${repr(name)}: ${repr(query)},
% endfor
}
% else:
# Data pre-checks: name -> a query that must return no row before this revision runs, e.g.
# DATA_CHECKS = {"no duplicate call_sid": "SELECT call_sid FROM calls GROUP BY call_sid HAVING count(*) > 1"}
% endif
% for line in module_lines:
${line}
% endfor


def upgrade() -> None:
    ${upgrades if upgrades else "pass"}


def downgrade() -> None:
    ${downgrades if downgrades else "pass"}
