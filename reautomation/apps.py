from django.apps import AppConfig, apps
from django.conf import settings


class ReautomationConfig(AppConfig):
    name = "reautomation"
    verbose_name = "REAutomation"

    def ready(self) -> None:
        # This release reads the tables an expand changed through its version schema (reautomation/release.py).
        from reautomation import release

        release.configure(settings.DATABASES, apps.get_models(include_auto_created=True))
