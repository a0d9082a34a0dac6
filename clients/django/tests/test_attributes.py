"""What the app claims about its users reaches session-guard when it changes,
from the ORM's signals, after the transaction commits (against the real
broker: a private queue bound to the test's events exchange sees every
event)."""

from __future__ import annotations

from typing import Any

import pytest
from django.contrib.auth.models import Group, User
from django.core.management import CommandError, call_command
from django.db import transaction
from django.test import Client


def claims(events: Any, count: int) -> dict[str, dict[str, Any]]:
    """The next ``count`` events, all ``attributes``: user id -> claim."""
    got = events.take(count)
    assert all(key.startswith("attributes.") for key, _, _ in got), got
    assert all("session_id" not in body for _, body, _ in got)
    return {body["user_id"]: body["attributes"] for _, body, _ in got}


def claim(events: Any) -> dict[str, Any]:
    [(_, body, _)] = events.take(1)
    assert body["type"] == "attributes", body
    return dict(body["attributes"])


@pytest.mark.django_db(transaction=True)
def test_group_changes_publish_the_new_claims_at_once(names: Any, capture: Any) -> None:
    events = capture(names.events_exchange)
    ada = User.objects.create_user("ada", password="pw")
    support, admins = Group.objects.create(name="support"), Group.objects.create(name="admins")
    assert events.quiet(0.3) == [], "creating a user or a group claims nothing"

    ada.groups.add(support)
    assert claim(events) == {"superuser": False, "staff": False, "roles": ["support"]}
    admins.user_set.add(ada)  # from the group's side
    assert claim(events)["roles"] == ["admins", "support"]
    ada.groups.add(support)  # already in it: nothing changed
    ada.groups.remove(support)
    assert claim(events)["roles"] == ["admins"]
    admins.user_set.clear()
    assert claim(events)["roles"] == []
    ada.groups.set([support, admins])
    assert claim(events)["roles"] == ["admins", "support"]
    ada.groups.clear()
    assert claim(events)["roles"] == []
    assert events.quiet(0.3) == []


@pytest.mark.django_db(transaction=True)
def test_flag_changes_publish_and_other_saves_do_not(names: Any, capture: Any) -> None:
    events = capture(names.events_exchange)
    ada = User.objects.create_user("ada", password="pw")
    ada.is_staff = True
    ada.save()
    assert claim(events) == {"superuser": False, "staff": True, "roles": []}
    ada.first_name = "Ada"
    ada.save()
    ada.save(update_fields=["first_name"])
    # A login saves last_login: only the login is published.
    Client().post("/login", {"username": "ada", "password": "pw"})
    [(_, login, _)] = events.take(1)
    assert login["type"] == "login"
    assert login["attributes"] == {"superuser": False, "staff": True, "roles": []}
    ada.is_superuser = True
    ada.save(update_fields=["is_superuser"])
    assert claim(events) == {"superuser": True, "staff": True, "roles": []}
    assert events.quiet(0.3) == []


@pytest.mark.django_db(transaction=True)
def test_a_group_renamed_or_deleted_reaches_its_members(names: Any, capture: Any) -> None:
    events = capture(names.events_exchange)
    ada, bob = (User.objects.create_user(n, password="pw") for n in ("ada", "bob"))
    User.objects.create_user("cy", password="pw")  # in no group: not claimed for
    group = Group.objects.create(name="support")
    group.user_set.add(ada, bob)
    assert set(claims(events, 2)) == {str(ada.pk), str(bob.pk)}

    group.name = "helpdesk"
    group.save()
    renamed = claims(events, 2)
    assert renamed == {str(u.pk): {"superuser": False, "staff": False, "roles": ["helpdesk"]} for u in (ada, bob)}
    group.save()  # the same name: nothing
    assert events.quiet(0.3) == []

    group.delete()
    assert claims(events, 2) == {str(u.pk): {"superuser": False, "staff": False, "roles": []} for u in (ada, bob)}


@pytest.mark.django_db(transaction=True)
def test_a_change_is_claimed_after_its_commit_and_never_if_rolled_back(names: Any, capture: Any) -> None:
    events = capture(names.events_exchange)
    ada = User.objects.create_user("ada", password="pw")
    support = Group.objects.create(name="support")

    class Undo(Exception):
        pass

    with pytest.raises(Undo), transaction.atomic():
        ada.groups.add(support)
        raise Undo
    assert events.quiet(0.5) == []

    with transaction.atomic():
        ada.groups.add(support)
        assert events.quiet(0.5) == [], "not before the commit"
    assert claim(events)["roles"] == ["support"]


@pytest.mark.django_db(transaction=True)
def test_without_roles_groups_are_not_claimed(names: Any, capture: Any, settings: Any) -> None:
    settings.SESSION_GUARD_SEND_ROLES = False
    events = capture(names.events_exchange)
    ada = User.objects.create_user("ada", password="pw")
    ada.groups.add(Group.objects.create(name="support"))
    assert events.quiet(0.5) == []
    Client().post("/login", {"username": "ada", "password": "pw"})
    [(_, login, _)] = events.take(1)
    assert login["attributes"] == {"superuser": False, "staff": False}


@pytest.mark.django_db(transaction=True)
def test_the_command_publishes_claims_changed_around_the_orm(names: Any, capture: Any) -> None:
    events = capture(names.events_exchange)
    ada, bob = (User.objects.create_user(n, password="pw") for n in ("ada", "bob"))
    User.objects.create_user("gone", password="pw", is_active=False)
    User.objects.filter(pk=ada.pk).update(is_staff=True)  # no signal
    assert events.quiet(0.3) == []

    call_command("session_guard_publish_attributes", "--user", str(ada.pk))
    assert claims(events, 1) == {str(ada.pk): {"superuser": False, "staff": True, "roles": []}}
    call_command("session_guard_publish_attributes", "--all")
    assert set(claims(events, 2)) == {str(ada.pk), str(bob.pk)}, "active users only"
    with pytest.raises(CommandError, match="no such user: 999"):
        call_command("session_guard_publish_attributes", "--user", "999")
    assert events.quiet(0.3) == []
