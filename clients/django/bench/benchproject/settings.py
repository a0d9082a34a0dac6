"""The tests' project as it is (SQLite, database sessions, the package's
settings from the SG_TEST_* variables, the package left out with
SG_TEST_NO_MIDDLEWARE=1), plus the session rotation in front of every other
middleware: before SessionMiddleware, which reads the cookie it sets."""

from testproject.settings import *  # noqa: F403
from testproject.settings import MIDDLEWARE

ROOT_URLCONF = "benchproject.urls"
MIDDLEWARE = ["benchproject.middleware.RotateSessions", *MIDDLEWARE]
