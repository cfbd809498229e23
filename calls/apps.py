from __future__ import annotations

from django.apps import AppConfig

from schema_engine import gate
from schema_engine.forecast import backfills, replay


class CallsConfig(AppConfig):
    name = "calls"
    default_auto_field = "django.db.models.BigAutoField"

    def ready(self) -> None:
        # The schema engine's backfill gate knows backfills only as apps register them: a revision
        # that declares requires_backfills = ("messages",) waits until no row needs that backfill.
        from calls import backfill  # imports the models: only once the app registry is ready

        for name in backfill.BACKFILLS:
            gate.register_backfill(
                name, command=f"manage.py backfill_context --only {name}",
                pending_rows=lambda url, name=name: backfill.pending_rows(url=url, only=(name,))[name])
        # The fills (expand_<revision>) are declared by the revisions the code has when the gate asks.
        gate.register_backfill_source(declared_fill)
        # A forecast with no capture to replay runs the agents' writes against its copy.
        from calls import workload

        replay.register_default_workload(workload.start_writers)
        # A forecast runs a sample of the backfills the pending revisions declare on its copy.
        from calls import backfill_sample

        backfills.register_backfill_sampler(backfill_sample.sample)


def declared_fill(name: str) -> gate.RegisteredBackfill | None:
    """Answer the gate for a fill the code's expand revisions declare: how many rows it still has to fill."""
    from calls.backfill import pending_rows, specs

    fill = next((fill for fill in specs.declared_fills() if fill.name == name), None)
    if fill is None:
        return None
    return gate.RegisteredBackfill(name=name, command=f"manage.py backfill_context --only {name}",
                                   pending_rows=lambda url: pending_rows(url=url, only=(name,))[name])
