"""A real Django project for the package's tests and its per-request cost
benchmark. Processes started by the tests (the listener, gunicorn) read the
same settings, steered by SG_TEST_* environment variables."""

import os
import tempfile

# The test process makes the directory; the processes it starts inherit it.
BASE = os.environ.get("SG_TEST_DIR") or tempfile.mkdtemp(prefix="sg-django-tests-")
os.environ.setdefault("SG_TEST_DIR", BASE)
os.environ.setdefault("SG_TEST_DB", os.path.join(BASE, "db.sqlite3"))
os.environ.setdefault("SG_TEST_CACHE", os.path.join(BASE, "cache"))
os.environ.setdefault("SG_TEST_SESSION_DIR", os.path.join(BASE, "sessions"))
os.makedirs(os.environ["SG_TEST_SESSION_DIR"], exist_ok=True)

SECRET_KEY = "session-guard-tests-only"
DEBUG = False
ALLOWED_HOSTS = ["*"]
USE_TZ = True
ROOT_URLCONF = "testproject.urls"
WSGI_APPLICATION = "testproject.wsgi.application"
DEFAULT_AUTO_FIELD = "django.db.models.BigAutoField"

INSTALLED_APPS = [
    "django.contrib.auth",
    "django.contrib.contenttypes",
    "django.contrib.sessions",
    "session_guard_django",
]

GUARD = "session_guard_django.middleware.SessionGuardMiddleware"
MIDDLEWARE = [
    "django.contrib.sessions.middleware.SessionMiddleware",
    "django.middleware.csrf.CsrfViewMiddleware",
    "django.contrib.auth.middleware.AuthenticationMiddleware",
    GUARD,
]
if os.environ.get("SG_TEST_NO_MIDDLEWARE"):
    # The benchmark's comparison runs (bench/request_cost.py): the same
    # project without the package.
    MIDDLEWARE.remove(GUARD)
    INSTALLED_APPS.remove("session_guard_django")
else:
    # The README's new_device_login receiver (testproject/receivers.py).
    INSTALLED_APPS.append("testproject.apps.TestProjectConfig")
# Emails are printed: in the listener's output, where the tests read them.
EMAIL_BACKEND = "django.core.mail.backends.console.EmailBackend"
DEFAULT_FROM_EMAIL = "security@shop.example"

# The devices page's template (session_guard_django/devices.html) comes
# from the app's templates directory.
TEMPLATES = [
    {
        "BACKEND": "django.template.backends.django.DjangoTemplates",
        "APP_DIRS": True,
        "OPTIONS": {"context_processors": ["django.template.context_processors.request"]},
    }
]
LOGIN_URL = "/login-page"

# One SQLite file shared by the test process and the processes it starts;
# pytest-django creates it afresh (TEST NAME = NAME).
DB_FILE = os.environ["SG_TEST_DB"]
DATABASES = {
    "default": {
        "ENGINE": "django.db.backends.sqlite3",
        "NAME": DB_FILE,
        "TEST": {"NAME": DB_FILE},
        "OPTIONS": {"timeout": 30},
    }
}

# A file cache, so that the cache-based session engines and the listener's
# record of revoked signed-cookie sessions are shared between processes.
CACHES = {
    "default": {
        "BACKEND": "django.core.cache.backends.filebased.FileBasedCache",
        "LOCATION": os.environ["SG_TEST_CACHE"],
    }
}
SESSION_ENGINE = os.environ.get("SG_TEST_SESSION_ENGINE", "django.contrib.sessions.backends.db")
SESSION_FILE_PATH = os.environ["SG_TEST_SESSION_DIR"]
PASSWORD_HASHERS = ["django.contrib.auth.hashers.MD5PasswordHasher"]

SESSION_GUARD_AMQP_URL = os.environ.get("SG_TEST_AMQP_URL", "amqp://guest:guest@127.0.0.1:5672/%2f")
SESSION_GUARD_APP = os.environ.get("SG_TEST_APP", "testproject")
SESSION_GUARD_EVENTS_EXCHANGE = os.environ.get("SG_TEST_EVENTS_EXCHANGE", "session_guard.events")
SESSION_GUARD_REVOCATIONS_EXCHANGE = os.environ.get(
    "SG_TEST_REVOCATIONS_EXCHANGE", "session_guard.revocations"
)
SESSION_GUARD_NOTICES_EXCHANGE = os.environ.get("SG_TEST_NOTICES_EXCHANGE", "session_guard.notices")
SESSION_GUARD_ENABLED = os.environ.get("SG_TEST_ENABLED", "1") == "1"

LOGGING = {
    "version": 1,
    "disable_existing_loggers": False,
    "handlers": {"stderr": {"class": "logging.StreamHandler"}},
    "loggers": {"session_guard_django": {"handlers": ["stderr"], "level": "INFO"}},
}
SESSION_GUARD_SEND_ROLES = os.environ.get("SG_TEST_SEND_ROLES", "1") == "1"
if "SG_TEST_REQUEST_INTERVAL" in os.environ:
    SESSION_GUARD_REQUEST_INTERVAL = float(os.environ["SG_TEST_REQUEST_INTERVAL"])

# The devices page (session_guard_django.urls): the worker's API and a token,
# read from the environment as an app would (the tests set them).
SESSION_GUARD_API_URL = os.environ.get("SG_TEST_API_URL", "http://127.0.0.1:9")
SESSION_GUARD_API_TOKEN = os.environ.get("SG_TEST_API_TOKEN", "sgt_unset")
SESSION_GUARD_API_TIMEOUT = 2.0
