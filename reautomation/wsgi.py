"""WSGI entry point for production servers (gunicorn reautomation.wsgi)."""
import os

from django.core.wsgi import get_wsgi_application

os.environ.setdefault("DJANGO_SETTINGS_MODULE", "reautomation.settings")
application = get_wsgi_application()
