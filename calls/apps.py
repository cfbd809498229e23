from django.apps import AppConfig


class CallsConfig(AppConfig):
    name = "calls"
    default_auto_field = "django.db.models.BigAutoField"

    def ready(self) -> None:
        # The schema engine's backfill gate knows backfills only as apps register them: a revision
        # that declares requires_backfills = ("messages",) waits until no row needs that backfill.
        from calls import backfill  # imports the models: only once the app registry is ready
        from schema_engine import gate

        for name in backfill.BACKFILLS:
            gate.register_backfill(
                name, command=f"manage.py backfill_context --only {name}",
                pending_rows=lambda url, name=name: backfill.pending_rows(url=url, only=(name,))[name])
