"""``manage.py session_guard_publish_attributes``: sends users' current claims.

The package sends a user's claims (``superuser``, ``staff``, ``roles``) with
each login and whenever they change through the ORM (attributes.py). Run
this command where session-guard may not know them:

- once when installing the package on a site whose users are already logged
  in (their sessions' logins were never published);
- after changing flags or groups around the ORM (``QuerySet.update()``, raw
  SQL, a data migration).

It publishes 500 users at a time and waits for the broker to confirm each
chunk, so that any number of users fits the publisher's buffer; it exits 0
once the broker has confirmed every event, 1 if it could not within
``--timeout`` seconds a chunk.
"""

from __future__ import annotations

from typing import Any

from django.contrib.auth import get_user_model
from django.core.exceptions import ValidationError
from django.core.management.base import BaseCommand, CommandError, CommandParser

from session_guard_django import attributes, publisher


class Command(BaseCommand):
    help = "Publish the current claims (superuser, staff, roles) of some or all users to session-guard."

    def add_arguments(self, parser: CommandParser) -> None:
        which = parser.add_mutually_exclusive_group(required=True)
        which.add_argument(
            "--user",
            action="append",
            metavar="PK",
            help="A user's primary key; repeat for more users.",
        )
        which.add_argument(
            "--all",
            action="store_true",
            help="Every user (every active user, when the user model has is_active).",
        )
        parser.add_argument("--database", default="default", help="The database to read users from (default: default).")
        parser.add_argument(
            "--timeout",
            type=float,
            default=60.0,
            help="Seconds to wait for the broker to confirm each chunk of 500 events (default 60).",
        )

    def handle(self, *args: Any, **options: Any) -> None:
        sender = publisher.get()
        if sender is None:
            raise CommandError(
                "session-guard publishing is off (SESSION_GUARD_ENABLED = False, or SESSION_GUARD_APP "
                "missing or invalid: run manage.py check)"
            )
        user_model = get_user_model()
        users = user_model._base_manager.using(options["database"])
        if options["all"]:
            if any(f.name == "is_active" for f in user_model._meta.get_fields()):
                users = users.filter(is_active=True)
            pks = list(users.order_by("pk").values_list("pk", flat=True))
        else:
            try:
                wanted = {user_model._meta.pk.to_python(value) for value in options["user"]}
            except ValidationError as error:
                raise CommandError(f"not a user's primary key: {error.messages[0]}") from error
            pks = list(users.filter(pk__in=wanted).values_list("pk", flat=True))
            missing = wanted - set(pks)
            if missing:
                raise CommandError(f"no such user: {', '.join(sorted(map(str, missing)))}")
        refused = sender.stats().refused_full
        queued, found = attributes.publish_now(pks, options["database"], wait=options["timeout"])
        confirmed = sender.flush(options["timeout"])
        stats = sender.stats()
        if not confirmed or queued < found or stats.refused_full > refused:
            raise CommandError(
                f"{found - queued} of {found} claims not handed over, {stats.pending} not confirmed within "
                f"{options['timeout']:g} s: is the broker reachable at SESSION_GUARD_AMQP_URL?"
            )
        self.stdout.write(f"published the claims of {found} users")
