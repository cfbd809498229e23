#!/usr/bin/env python
"""Django's command-line utility for administrative tasks."""
import os
import sys


def main() -> None:
    os.environ.setdefault("DJANGO_SETTINGS_MODULE", "reautomation.settings")
    from django.core.exceptions import ImproperlyConfigured
    from django.core.management import execute_from_command_line

    try:
        execute_from_command_line(sys.argv)
    except ImproperlyConfigured as exc:
        # A bad DATABASE_URL or a missing SECRET_KEY: one line, not a traceback.
        if "--traceback" in sys.argv:
            raise
        sys.stderr.write(f"manage.py: configuration error: {exc}\n")
        sys.exit(2)
    except KeyboardInterrupt:
        # Ctrl-C (or SIGTERM, in commands that take it as Ctrl-C) outside a command's own handling,
        # e.g. while Django starts: one line and the shell's code, not a traceback.
        if "--traceback" in sys.argv:
            raise
        sys.stderr.write("manage.py: interrupted\n")
        sys.exit(130)
    except BrokenPipeError:
        # The reader went away (`migrate_schema history | head`): what was running rolled back its
        # transaction; say nothing more to a closed pipe (Python's documented idiom).
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        sys.exit(1)


if __name__ == "__main__":
    main()
