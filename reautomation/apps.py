from django.apps import AppConfig


class ReautomationConfig(AppConfig):
    name = "reautomation"
    verbose_name = "REAutomation"
