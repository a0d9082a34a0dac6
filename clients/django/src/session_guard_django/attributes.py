"""What the app claims about its users, and telling session-guard when that
changes.

session-guard's rules (``[[limits.rules]]``, the ``superuser_unlimited``
hook) decide a user's limits from what the app claims about the user:
``superuser`` (``is_superuser``), ``staff`` (``is_staff``) and ``roles``
(the user's group names, unless SESSION_GUARD_SEND_ROLES is False). The
worker remembers the latest claim per user and app, so the package sends it
with each login and again only when it changes: requests carry none, and
read nothing from the database.

A change is sent at once as an ``attributes`` event, from whichever process
or shell makes it, after its transaction commits (a change rolled back is
never claimed), with the claims read then:

- group membership: ``m2m_changed`` of the user model's ``groups``, from
  either side (``user.groups.add(g)``, ``group.user_set.remove(u)``,
  ``clear()``);
- ``is_superuser`` or ``is_staff`` saved with another value: ``pre_save``
  reads the stored flags (one query, and only for a save that may change
  them: not the ``save(update_fields=["last_login"])`` of a login);
- a group renamed or deleted: its members' roles change.

Writes that send no signal (``QuerySet.update()``, raw SQL, rows inserted
into the through table directly) are not seen:
``manage.py session_guard_publish_attributes`` sends the current claims of
any users.
"""

from __future__ import annotations

import time
from collections.abc import Collection, Iterable
from typing import Any

from django.contrib.auth import get_user_model
from django.db import models, router, transaction

from . import conf, events, publisher
from .buffer import Event

#: The user model's fields claimed as ``superuser`` and ``staff``.
FLAGS = {"is_superuser": "superuser", "is_staff": "staff"}
#: Users whose claims are read in one go (two queries) when many change at
#: once: a group renamed, the management command.
CHUNK = 500
#: Where a ``pre_save``/``pre_delete`` receiver leaves what its ``post_``
#: receiver compares with, on the instance.
STASH = "_session_guard_before"

_warnings = publisher.RateLimitedWarning()


def groups_field(user_model: type[models.Model]) -> Any:
    """The user model's ``groups`` many-to-many field, or ``None`` for a
    model without one (then no roles are claimed)."""
    try:
        field = user_model._meta.get_field("groups")
    except Exception:
        return None
    return field if field.many_to_many else None


def _flag_fields(user_model: type[models.Model]) -> list[str]:
    """The claimed flags the user model has."""
    names = {f.name for f in user_model._meta.get_fields()}
    return [name for name in FLAGS if name in names]


def claims_now(user: Any) -> dict[str, Any] | None:
    """The claims of ``user`` as the database has them now (two queries, on
    the database writes go to): the flags of the ``user`` object were read
    before the password check, and a change committed since must not be
    claimed away by an event stamped later. ``None`` if the user is gone."""
    using = router.db_for_write(type(user), instance=user)
    return claims_of_users([user.pk], using).get(user.pk)


def claims_of_users(pks: Collection[Any], using: str) -> dict[Any, dict[str, Any]]:
    """The claims of the users with these primary keys (two queries);
    users that no longer exist are left out. Stamp the event before calling
    this: of two events, the later stamp then always carries a read that saw
    every change committed before the earlier one."""
    user_model = get_user_model()
    flags = _flag_fields(user_model)
    rows = user_model._base_manager.using(using).filter(pk__in=pks).values_list("pk", *flags)
    claims: dict[Any, dict[str, Any]] = {}
    for pk, *values in rows:
        stored = dict(zip(flags, values))
        claims[pk] = {claim: bool(stored.get(field, False)) for field, claim in FLAGS.items()}
    field = groups_field(user_model)
    if claims and conf.get().send_roles and field is not None:
        names = _group_names(field, claims.keys(), using)
        for pk, claim in claims.items():
            claim["roles"] = names.get(pk, [])
    return claims


def _through(field: Any) -> tuple[type[models.Model], str, str, str]:
    """The user-group through model of the ``groups`` field, its user key's
    and group key's columns, and its group key's name, as the field itself
    names them (a custom through model may have other keys to the user
    model)."""
    through = field.remote_field.through
    user_key = through._meta.get_field(field.m2m_field_name())
    group_key = through._meta.get_field(field.m2m_reverse_field_name())
    return through, user_key.attname, group_key.attname, group_key.name


def _group_names(field: Any, pks: Iterable[Any], using: str) -> dict[Any, list[str]]:
    through, user_column, _, group_name = _through(field)
    rows = (
        through._base_manager.using(using)
        .filter(**{f"{user_column}__in": list(pks)})
        .values_list(user_column, f"{group_name}__name")
    )
    names: dict[Any, list[str]] = {}
    for pk, name in rows:
        names.setdefault(pk, []).append(name)
    return {pk: events.fit_roles(found) for pk, found in names.items()}


def _members(field: Any, group_pk: Any, using: str) -> set[Any]:
    through, user_column, group_column, _ = _through(field)
    rows = through._base_manager.using(using).filter(**{group_column: group_pk})
    return set(rows.values_list(user_column, flat=True))


def publish_later(pks: Iterable[Any], using: str) -> None:
    """Publishes the claims of these users once the transaction in progress
    on ``using`` commits (at once outside one)."""
    users = {pk for pk in pks if pk is not None}
    if users and publisher.get() is not None:
        transaction.on_commit(lambda: _publish_quietly(users, using), using=using)


def _publish_quietly(pks: Collection[Any], using: str) -> None:
    try:
        queued, users = publish_now(pks, using)
    except Exception as error:
        # The change itself committed: it must not fail because of us.
        _warnings.warn("attributes", "session-guard: could not publish changed claims: %r", error)
        return
    if queued < users:
        _warnings.warn(
            "attributes-full",
            "session-guard: %d of %d changed claims not published: the buffer is full of logins, logouts "
            "and claims (is the broker reachable?); manage.py session_guard_publish_attributes sends them later",
            users - queued,
            users,
        )


def publish_now(pks: Collection[Any], using: str = "default", *, wait: float | None = None) -> tuple[int, int]:
    """Reads the claims of these users now and hands one ``attributes``
    event per user to the publisher, ``CHUNK`` users at a time; with
    ``wait``, waits up to that many seconds after each chunk for the broker
    to confirm it, so that any number of users fits the buffer. Returns
    (events the buffer took, users found)."""
    queued = found = 0
    ordered = list(pks)
    for start in range(0, len(ordered), CHUNK):
        at = time.time()  # before the read: see claims_of_users
        claims = claims_of_users(ordered[start : start + CHUNK], using)
        found += len(claims)
        for pk, claim in claims.items():
            event = Event(kind="attributes", session_id=None, user_id=str(pk), occurred_at=at, attributes=claim)
            queued += publisher.publish(event)
        sender = publisher.get()
        if wait is not None and sender is not None and not sender.flush(wait):
            break
    return queued, found


# ----- receivers (connected in apps.py) -------------------------------------


def on_groups_changed(
    sender: type[models.Model],
    instance: Any,
    action: str,
    reverse: bool,
    pk_set: set[Any] | None,
    using: str,
    **kwargs: Any,
) -> None:
    """``m2m_changed`` of the user model's groups. ``reverse``: the change
    was made from the group's side (``instance`` is the group, ``pk_set``
    the users)."""
    if publisher.get() is None or not conf.get().send_roles:
        return
    if action == "pre_clear" and reverse:
        # The group's members, before the clear takes them away.
        instance.__dict__[STASH] = _members(groups_field(get_user_model()), instance.pk, using)
        return
    if action not in ("post_add", "post_remove", "post_clear"):
        return
    if not reverse:
        if action != "post_clear" and not pk_set:
            return  # nothing added or removed
        publish_later([instance.pk], using)
    elif action == "post_clear":
        publish_later(instance.__dict__.pop(STASH, ()), using)
    else:
        publish_later(pk_set or (), using)


def before_user_saved(
    sender: type[models.Model], instance: Any, raw: bool, using: str, update_fields: Any, **kwargs: Any
) -> None:
    """Reads the stored flags of a user about to be saved, when the save may
    change them."""
    instance.__dict__.pop(STASH, None)  # left by a save that failed
    if raw or instance._state.adding or instance.pk is None or publisher.get() is None:
        return
    flags = _flag_fields(sender)
    if not flags or (update_fields is not None and not set(update_fields) & set(flags)):
        return
    stored = sender._base_manager.using(using).filter(pk=instance.pk).values_list(*flags).first()
    if stored is not None:
        instance.__dict__[STASH] = tuple(stored)


def after_user_saved(sender: type[models.Model], instance: Any, using: str, **kwargs: Any) -> None:
    """Publishes the user's claims if the save changed a flag."""
    stored = instance.__dict__.pop(STASH, None)
    if stored is None:
        return
    if stored != tuple(getattr(instance, f) for f in _flag_fields(sender)):
        publish_later([instance.pk], using)


def before_group_saved(
    sender: type[models.Model], instance: Any, raw: bool, using: str, update_fields: Any, **kwargs: Any
) -> None:
    """Reads the stored name of a group about to be saved, when the save may
    rename it."""
    instance.__dict__.pop(STASH, None)  # left by a save that failed
    if raw or instance._state.adding or instance.pk is None or publisher.get() is None:
        return
    if not conf.get().send_roles or (update_fields is not None and "name" not in update_fields):
        return
    stored = sender._base_manager.using(using).filter(pk=instance.pk).values_list("name", flat=True).first()
    if stored is not None:
        instance.__dict__[STASH] = stored


def after_group_saved(sender: type[models.Model], instance: Any, using: str, **kwargs: Any) -> None:
    """A group renamed: its members' roles changed."""
    stored = instance.__dict__.pop(STASH, None)
    if stored is None or stored == instance.name:
        return
    field = groups_field(get_user_model())
    if field is not None:
        publish_later(_members(field, instance.pk, using), using)


def before_group_deleted(sender: type[models.Model], instance: Any, using: str, **kwargs: Any) -> None:
    """The members of a group about to be deleted (the cascade sends no
    ``m2m_changed``)."""
    field = groups_field(get_user_model())
    if field is None or publisher.get() is None or not conf.get().send_roles:
        return
    instance.__dict__[STASH] = _members(field, instance.pk, using)


def after_group_deleted(sender: type[models.Model], instance: Any, using: str, **kwargs: Any) -> None:
    """A group deleted: its former members lost a role."""
    publish_later(instance.__dict__.pop(STASH, ()), using)
