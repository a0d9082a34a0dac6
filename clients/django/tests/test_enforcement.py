"""End to end: real Django, the real worker binary, the real broker, the
listener in its own process."""

from __future__ import annotations

import json
from typing import Any

import pytest
from django.contrib.auth.models import Group, User
from django.test import Client

from conftest import wait_until

ENGINES = {
    "db": "django.contrib.sessions.backends.db",
    "cache": "django.contrib.sessions.backends.cache",
    "cached_db": "django.contrib.sessions.backends.cached_db",
    "file": "django.contrib.sessions.backends.file",
    "signed_cookies": "django.contrib.sessions.backends.signed_cookies",
}


def log_in(username: str, agent: str) -> Client:
    client = Client(HTTP_USER_AGENT=agent)
    response = client.post("/login", {"username": username, "password": "pw"})
    assert response.status_code == 200, response.content
    assert client.get("/whoami").content == username.encode()
    return client


def guard_id(client: Client) -> str:
    """The id session-guard knows the client's session by."""
    from session_guard_django import conf, events

    session = client.session
    if conf.signed_cookies():
        return str(session[events.GUARD_ID_KEY])
    return str(session.session_key)


def states(sessions: list[dict[str, Any]]) -> dict[str, tuple[str, str | None]]:
    return {s["session_id"]: (s["state"], s["end_reason"]) for s in sessions}


@pytest.mark.django_db(transaction=True)
@pytest.mark.parametrize("engine", list(ENGINES))
def test_second_login_logs_the_first_out(engine: str, settings: Any, names: Any, worker: Any, listener: Any) -> None:
    settings.SESSION_ENGINE = ENGINES[engine]
    user = User.objects.create_user("ada", password="pw")
    w = worker()
    listener()

    first = log_in("ada", "laptop")
    first_id = guard_id(first)
    second = log_in("ada", "phone")
    second_id = guard_id(second)
    assert first_id != second_id

    # The worker keeps the newer login and revokes the older one...
    wait_until(
        "the worker to revoke the first session",
        lambda: states(w.sessions(user.pk)).get(first_id) == ("revoked", "session_limit"),
    )
    # ... the listener ends it, and its next request is anonymous.
    wait_until("the first client to be logged out", lambda: first.get("/whoami").content == b"anonymous")
    assert second.get("/whoami").content == b"ada"
    logged = {s["session_id"]: s for s in w.sessions(user.pk)}
    assert logged[second_id]["state"] == "active"
    assert logged[second_id]["user_agent"] == "phone"
    assert logged[second_id]["ip"] == "127.0.0.1"


@pytest.mark.django_db(transaction=True)
def test_a_superuser_keeps_both_sessions_when_the_superuser_rule_is_on(names: Any, worker: Any, listener: Any) -> None:
    root = User.objects.create_superuser("root", password="pw")
    User.objects.create_user("bob", password="pw")
    w = worker(hooks=["rules", "superuser_unlimited", "user_overrides"])
    listener()

    first, second = log_in("root", "laptop"), log_in("root", "phone")
    # Both logins are in the worker's log, as active: the decision on the
    # second was made in the same transaction that logged it.
    wait_until(
        "both superuser sessions in the worker's log",
        lambda: [s["state"] for s in w.sessions(root.pk)] == ["active", "active"],
    )
    # The same rule set limits an ordinary user (so the rule, not a broken
    # pipeline, is what kept both).
    bob_first = log_in("bob", "laptop")
    log_in("bob", "phone")
    wait_until("bob's first session to end", lambda: bob_first.get("/whoami").content == b"anonymous")
    assert first.get("/whoami").content == b"root"
    assert second.get("/whoami").content == b"root"
    assert [s["state"] for s in w.sessions(root.pk)] == ["active", "active"]


SUPPORT_RULE = """
[[limits.rules]]
name = "support"
when = { role = "support" }
max_sessions = 2
"""


@pytest.mark.django_db(transaction=True)
def test_group_changes_reach_the_workers_rules_without_a_login_or_request(
    names: Any, worker: Any, listener: Any
) -> None:
    user = User.objects.create_user("cy", password="pw")
    support = Group.objects.create(name="support")
    user.groups.add(support)
    w = worker(extra=SUPPORT_RULE)
    listener()

    def claims() -> dict[str, Any]:
        report = w.command("limits", "get", "--user", str(user.pk), "--app", names.app, "--json")
        return dict(json.loads(report)[0]["attributes"])

    # In the support group cy may hold two sessions.
    laptop, phone = log_in("cy", "laptop"), log_in("cy", "phone")
    wait_until(
        "both sessions active",
        lambda: [s["state"] for s in w.sessions(user.pk)] == ["active", "active"],
    )
    assert claims() == {"superuser": False, "staff": False, "roles": ["support"]}

    # Taken out of the group (by an admin, a shell, anything that goes
    # through the ORM): the worker applies the configured limit of 1 at
    # once, and the older session ends, before either makes a request.
    support.user_set.remove(user)
    laptop_id, phone_id = guard_id(laptop), guard_id(phone)
    wait_until(
        "the laptop's session revoked",
        lambda: states(w.sessions(user.pk)) == {laptop_id: ("revoked", "session_limit"), phone_id: ("active", None)},
    )
    assert claims() == {"superuser": False, "staff": False, "roles": []}
    wait_until("the laptop to be logged out", lambda: laptop.get("/whoami").content == b"anonymous")
    assert phone.get("/whoami").content == b"cy"

    # Added to a group, and made staff: the claims follow, no request needed.
    user.groups.add(Group.objects.create(name="admins"))
    user.is_staff = True
    user.save()
    wait_until(
        "the new claims",
        lambda: claims() == {"superuser": False, "staff": True, "roles": ["admins"]},
    )


@pytest.mark.django_db(transaction=True)
def test_a_password_change_keeps_the_session(names: Any, worker: Any, listener: Any) -> None:
    """Django moves the session to a new key without a signal: the worker
    must not take the new key for a second session and revoke it."""
    user = User.objects.create_user("ada", password="pw")
    w = worker()
    listener()
    client = log_in("ada", "laptop")
    old = client.session.session_key
    new = client.post("/password", {"password": "pw2"}).content.decode()
    assert client.get("/whoami").content == b"ada"
    wait_until(
        "the old key ended and the new one active",
        lambda: states(w.sessions(user.pk)) == {old: ("logged_out", "logout"), new: ("active", None)},
    )
    assert client.get("/whoami").content == b"ada"
