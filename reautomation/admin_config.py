"""Django's admin app with the operators' site (``reautomation/admin_site.py``) as ``admin.site``.

Its own module: ``reautomation/apps.py`` may hold only this project's app config.
"""
from django.contrib.admin.apps import AdminConfig


class OperatorAdminConfig(AdminConfig):
    default_site = "reautomation.admin_site.OperatorAdminSite"
