import os

from django.core.wsgi import get_wsgi_application

os.environ.setdefault("DJANGO_SETTINGS_MODULE", "testproject.settings")
application = get_wsgi_application()

if os.environ.get("SG_TEST_PUBLISH_AT_IMPORT"):
    # The fork test: start the publisher in gunicorn's master (--preload)
    # before it forks its workers, as an app that logs at import might.
    import time

    from session_guard_django import publisher
    from session_guard_django.buffer import Event

    publisher.publish(Event(kind="logout", session_id="preload-" + str(os.getpid()), user_id=None, occurred_at=time.time()))
    publisher.get().flush(5)  # type: ignore[union-attr]
