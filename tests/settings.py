"""Settings for the test suite: the project's settings with a fixed, test-only secret."""
import os

os.environ.setdefault("SECRET_KEY", "test-only-secret-key-not-for-production")

from reautomation.settings import *  # noqa: E402,F401,F403
