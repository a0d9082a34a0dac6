"""Makes the benchmark's users and logs each in once with
``django.contrib.auth.login``, with the package installed, so that the
package publishes every login as it does for a real one; writes one
``session_key username`` line per session. Exits non-zero unless the broker
confirmed every login.

    python -m benchproject.login COUNT FILE    (in the package variant's environment)
"""

from __future__ import annotations

import sys
from importlib import import_module

import django

#: Users logged in per transaction (SQLite: one commit per chunk, not per row).
CHUNK = 500


def main() -> None:
    count, path = int(sys.argv[1]), sys.argv[2]
    django.setup()
    from django.conf import settings
    from django.contrib.auth import login
    from django.contrib.auth.hashers import make_password
    from django.contrib.auth.models import User
    from django.core.management import call_command
    from django.db import transaction
    from django.test import RequestFactory

    from session_guard_django import publisher

    call_command("migrate", verbosity=0)
    password = make_password("pw")  # hashed once: the benchmark never checks it
    User.objects.bulk_create(User(username=f"bench{i}", password=password) for i in range(count))
    users = list(User.objects.filter(username__startswith="bench").order_by("pk"))
    store = import_module(settings.SESSION_ENGINE).SessionStore
    factory = RequestFactory()
    lines = []
    for start in range(0, len(users), CHUNK):
        with transaction.atomic():
            for user in users[start : start + CHUNK]:
                request = factory.post("/login", HTTP_USER_AGENT="session-guard bench")
                request.session = store()
                login(request, user, backend="django.contrib.auth.backends.ModelBackend")
                request.session.save()
                lines.append(f"{request.session.session_key} {user.username}\n")
    with open(path, "w") as out:
        out.writelines(lines)

    guard = publisher.get()
    if guard is None:
        raise SystemExit("the package is not publishing: check SESSION_GUARD_APP")
    if not guard.flush(120):
        raise SystemExit(f"logins not confirmed by the broker after 120 s: {guard.stats()}")
    stats = guard.stats()
    if stats.published != count or stats.unroutable or stats.invalid:
        raise SystemExit(f"expected {count} logins published, got {stats}")


if __name__ == "__main__":
    main()
