"""The schema engine: Alembic driven for this project, with its guards, lint, backups and deploy plan.

It knows nothing of the apps (``calls``, ``monitoring``) or the site (``reautomation``): what it
needs from them, such as which backfill a revision waits for, they register with it
(``gate.register_backfill``). See README "Architecture".
"""
